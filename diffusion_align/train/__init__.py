"""Training: ``step.py`` holds the science of one step, ``loop.py`` the engineering of the offline loop."""

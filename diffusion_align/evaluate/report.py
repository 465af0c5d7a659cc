"""What people look at: PNG comparison grids and one self-contained HTML report.

The report is a single file (images inlined as base64, styles and a few lines of JavaScript inline, nothing fetched)
with the per-model mean scores, the pairwise win rates with their intervals, the figures, and a table of every
(prompt, sample): each model's image (clips: an animated GIF) with its scores underneath, and score-difference
columns. Clicking a column header sorts by it (again: reverses), e.g. to see where alignment helped most or hurt.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from diffusion_align.evaluate.media import (
    GridRow,
    comparison_grid,
    encode_image,
    fit_size,
    gif_bytes,
    load_frames,
    write_atomic,
)
from diffusion_align.evaluate.results import KEY_COLUMNS, EvaluationResults, score_column
from diffusion_align.evaluate.stats import WinRate


@dataclass(frozen=True)
class ReportSettings:
    """What the grids and the HTML report show.

    Attributes:
        title: the report's heading (``None``: "Evaluation: <prompt set>").
        thumbnail_size: longer side, px, of images embedded in the report (larger ones are downscaled, JPEG).
        display_size: on-screen width, px, of each image in the report's table.
        max_rows: (prompt, sample) rows in the report's table, by prompt order (``None``: all; statistics always
            use all).
        rows_per_grid: rows per PNG grid page.
        grid_cell_size: side, px, of each image in the PNG grids.
        frames_per_second: playback speed of clips' GIFs.
        plots: draw the score-distribution and win-rate figures (needs matplotlib).
    """

    title: str | None = None
    thumbnail_size: int = 256
    display_size: int = 160
    max_rows: int | None = None
    rows_per_grid: int = 16
    grid_cell_size: int = 128
    frames_per_second: float = 8.0
    plots: bool = True


def score_caption(row: pd.Series, rewards: Sequence[str]) -> str:
    """``"reward: value"`` lines of one sample's scores (4 significant digits)."""
    return "\n".join(f"{reward}: {row[score_column(reward)]:.4g}" for reward in rewards)


def paired_rows(results: EvaluationResults, max_rows: int | None = None) -> list[tuple[tuple[int, int], list[pd.Series]]]:
    """``[((prompt_index, sample_index), [row of each model])]`` in prompt order, first ``max_rows`` keys."""
    by_model = {model: results.rows_of(model).set_index(KEY_COLUMNS, drop=False) for model in results.model_names}
    keys = list(by_model[results.model_names[0]].index)[:max_rows]
    return [(key, [by_model[model].loc[key] for model in results.model_names]) for key in keys]


def write_grids(results: EvaluationResults, directory: Path, settings: ReportSettings) -> list[Path]:
    """PNG pages ``grid-000.png, ...``: prompts down, models across, scores under each image."""
    pages = []
    rows = paired_rows(results)
    for page, start in enumerate(range(0, len(rows), settings.rows_per_grid)):
        grid_rows = []
        for (_, sample_index), model_rows in rows[start : start + settings.rows_per_grid]:
            first = model_rows[0]
            label = f"{first['prompt']}  (sample {sample_index}, seed {first['seed']})"
            images = [load_frames(Path(r["image"]), 1)[0] for r in model_rows]  # clips: the whole frame strip
            grid_rows.append(GridRow(label, images, [score_caption(r, results.reward_names) for r in model_rows]))
        grid = comparison_grid(results.model_names, grid_rows, settings.grid_cell_size)
        path = directory / f"grid-{page:03d}.png"
        pages.append(write_atomic(path, lambda temporary, grid=grid: grid.save(temporary, format="PNG")))
    return pages


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def sample_uri(row: pd.Series, settings: ReportSettings) -> str:
    """An image as PNG (or JPEG when downscaled), a clip as an animated GIF, as a data URI."""
    frames = load_frames(Path(row["image"]), int(row["num_frames"]))
    if len(frames) > 1:
        frames = [fit_size(f, settings.thumbnail_size) if max(f.size) > settings.thumbnail_size else f for f in frames]
        return data_uri(gif_bytes(frames, settings.frames_per_second), "image/gif")
    image = frames[0]
    if max(image.size) <= settings.thumbnail_size:
        return data_uri(encode_image(image, "PNG"), "image/png")
    return data_uri(encode_image(fit_size(image, settings.thumbnail_size), "JPEG"), "image/jpeg")


STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:4px 6px;vertical-align:top;font-size:13px}
th{background:#f2f2f2}
#samples th{cursor:pointer;user-select:none}
#samples th.asc::after{content:" \\25B2"} #samples th.desc::after{content:" \\25BC"}
#samples img{display:block;image-rendering:pixelated}
.scores{font-family:monospace;white-space:pre;font-size:12px}
.better{color:#0a7a2a} .worse{color:#b3261e}
.figures{display:flex;flex-wrap:wrap;gap:1em} figure{margin:0} figure img{height:240px}
"""

SORT_SCRIPT = """
document.querySelectorAll('#samples th').forEach(function (header, column) {
  header.addEventListener('click', function () {
    var body = document.querySelector('#samples tbody');
    var ascending = !header.classList.contains('asc');
    document.querySelectorAll('#samples th').forEach(function (h) { h.classList.remove('asc', 'desc'); });
    header.classList.add(ascending ? 'asc' : 'desc');
    var numeric = header.dataset.type === 'number';
    var rows = Array.from(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[column].dataset.value, y = b.cells[column].dataset.value;
      var order = numeric ? parseFloat(x) - parseFloat(y) : x.localeCompare(y);
      return ascending ? order : -order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  });
});
"""


def _cell(content: str, value: object, css_class: str = "") -> str:
    attribute = f' class="{css_class}"' if css_class else ""
    return f'<td data-value="{html.escape(str(value))}"{attribute}>{content}</td>'


def summary_html(summary: Sequence[Mapping], rewards: Sequence[str], models: Sequence[str]) -> str:
    """Mean score per model (rows) and reward (columns), with its interval."""
    cells = {(s["model"], s["reward"]): f"{s['mean']:.4g} [{s['low']:.4g}, {s['high']:.4g}]" for s in summary}
    head = "".join(f"<th>{html.escape(r)}</th>" for r in rewards)
    body = "".join(
        f"<tr><th>{html.escape(m)}</th>" + "".join(f"<td>{cells[(m, r)]}</td>" for r in rewards) + "</tr>" for m in models
    )
    return f'<table id="summary"><thead><tr><th>model</th>{head}</tr></thead><tbody>{body}</tbody></table>'


def win_rates_html(win_rates: Sequence[WinRate]) -> str:
    """One row per comparison: win rate with interval, W/T/L, mean difference with interval, sign-test p."""
    if not win_rates:
        return "<p>One model: no pairwise comparison.</p>"
    head = "<tr><th>model</th><th>vs</th><th>reward</th><th>win rate</th><th>wins / ties / losses</th>" \
           "<th>mean difference</th><th>sign test p</th></tr>"
    rows = "".join(
        f"<tr><td>{html.escape(w.model)}</td><td>{html.escape(w.opponent)}</td><td>{html.escape(w.reward)}</td>"
        f"<td>{w.win_rate:.1%} [{w.low:.1%}, {w.high:.1%}]</td><td>{w.wins} / {w.ties} / {w.losses}</td>"
        f"<td>{w.mean_difference:+.4g} [{w.difference_low:+.4g}, {w.difference_high:+.4g}]</td>"
        f"<td>{w.sign_test_p:.3g}</td></tr>"
        for w in win_rates
    )
    return f'<table id="win-rates"><thead>{head}</thead><tbody>{rows}</tbody></table>'


def samples_html(results: EvaluationResults, settings: ReportSettings) -> str:
    """The sortable table: one row per (prompt, sample), one image column per model, difference columns."""
    models, rewards = results.model_names, results.reward_names
    baseline, first_reward = models[0], (rewards[0] if rewards else None)
    differences = [(model, reward) for model in models[1:] for reward in rewards]
    has_categories = results.table["category"].notna().any()
    headers = ['<th data-type="number">#</th>', '<th data-type="text">prompt</th>', '<th data-type="number">seed</th>']
    headers += ['<th data-type="text">category</th>'] if has_categories else []
    headers += [f'<th data-type="number">{html.escape(m)}</th>' for m in models]
    headers += [f'<th data-type="number">&Delta; {html.escape(r)}<br>{html.escape(m)} &minus; {html.escape(baseline)}</th>'
                for m, r in differences]
    body = []
    for (prompt_index, sample_index), model_rows in paired_rows(results, settings.max_rows):
        first = model_rows[0]
        cells = [_cell(f"{prompt_index}.{sample_index}", prompt_index + sample_index / 1000),
                 _cell(html.escape(first["prompt"]), first["prompt"]), _cell(str(first["seed"]), first["seed"])]
        cells += [_cell(html.escape(str(first["category"])), first["category"])] if has_categories else []
        for row in model_rows:
            image = f'<img src="{sample_uri(row, settings)}" width="{settings.display_size}" alt="{html.escape(row["model"])}">'
            scores = f'<div class="scores">{html.escape(score_caption(row, rewards))}</div>'
            cells.append(_cell(image + scores, row[score_column(first_reward)] if first_reward else 0, "sample"))
        for model, reward in differences:
            delta = model_rows[models.index(model)][score_column(reward)] - first[score_column(reward)]
            css = "better" if delta > 0 else "worse" if delta < 0 else ""
            cells.append(_cell(f"{delta:+.4g}", delta, css))
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table id="samples"><thead><tr>{"".join(headers)}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def report_html(
    results: EvaluationResults,
    summary: Sequence[Mapping],
    win_rates: Sequence[WinRate],
    settings: ReportSettings,
    figures: Mapping[str, bytes] | None = None,
) -> str:
    """The whole report as one HTML document (see the module docstring)."""
    prompt_set = results.settings.get("prompt_set", "prompts")
    title = settings.title or f"Evaluation: {prompt_set}"
    n_prompts = results.table["prompt_index"].nunique()
    n_samples = len(results.table) // max(1, len(results.models) * n_prompts)
    sampling = ", ".join(f"{k}={v}" for k, v in results.settings.get("sampling", {}).items() if v not in (None, {}))
    figure_html = "".join(
        f'<figure><img src="{data_uri(png, "image/png")}" alt="{html.escape(name)}"><figcaption>{html.escape(name)}'
        "</figcaption></figure>" for name, png in (figures or {}).items()
    )
    rewards = "".join(f"<li><b>{html.escape(n)}</b> ({html.escape(r['class'])}): {html.escape(r['scale'])}</li>"
                      for n, r in results.rewards.items())
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{STYLE}</style>",
        f"</head><body><h1>{html.escape(title)}</h1>",
        f"<p>{n_prompts} prompts &times; {n_samples} samples per model, identical seeds for every model. "
        f"Sampling: {html.escape(sampling)}.</p><p>Reward models (higher is better):</p><ul>{rewards}</ul>",
        "<h2>Mean scores</h2>", summary_html(summary, results.reward_names, results.model_names),
        "<h2>Win rates</h2>", win_rates_html(win_rates), f'<div class="figures">{figure_html}</div>',
        "<h2>Samples</h2><p>Click a column header to sort by it (image columns sort by the first reward).</p>",
        samples_html(results, settings), f"<script>{SORT_SCRIPT}</script></body></html>",
    ]
    return "".join(parts)


def write_report(path: str | Path, document: str) -> Path:
    """Write the HTML ``document`` to ``path`` (through a temporary file)."""
    return write_atomic(Path(path), lambda temporary: temporary.write_text(document, encoding="utf-8"))

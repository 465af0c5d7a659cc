"""The HTML report parsed without a browser: self-contained, every sample's image and scores, sortable headers;
and the PNG grids and plots next to it."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser

from PIL import Image

from diffusion_align.evaluate.report import ReportSettings, report_html
from diffusion_align.evaluate.results import score_column


class ReportParser(HTMLParser):
    """Collects tables (id -> rows of cell texts), images, scripts and every URL-bearing attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[dict[str, str]] = []
        self.sort_types: list[str] = []
        self.cell_values: list[str] = []
        self.urls: list[str] = []
        self.scripts = 0
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.urls += [value for key, value in attrs if key in ("src", "href") and value]
        if tag == "table":
            self._table = attributes.get("id", "")
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []
            if self._table == "samples" and tag == "th":
                self.sort_types.append(attributes.get("data-type", ""))
            if self._table == "samples" and tag == "td":
                self.cell_values.append(attributes.get("data-value"))
        elif tag == "img":
            self.images.append(attributes)
        elif tag == "script":
            self.scripts += 1

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append(" ".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None and data.strip():
            self._cell.append(data.strip())


def parse(path) -> ReportParser:
    parser = ReportParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def test_report_is_self_contained(evaluation):
    _, out_dir = evaluation
    report = parse(out_dir / "report.html")
    assert report.urls and all(url.startswith("data:") for url in report.urls), "report fetches something"
    assert report.scripts == 1


def test_samples_table_shows_every_image_with_its_scores(evaluation):
    results, out_dir = evaluation
    report = parse(out_dir / "report.html")
    rows = report.tables["samples"]
    header, body = rows[0], rows[1:]
    assert header[:4] == ["#", "prompt", "seed", "category"] and header[4:6] == ["base", "aligned"]
    assert len(body) == len(results.table) // 2  # one row per (prompt, sample)
    sample_images = [image for image in report.images if image.get("alt") in ("base", "aligned")]
    assert len(sample_images) == len(results.table)
    decoded = Image.open(io.BytesIO(base64.b64decode(sample_images[0]["src"].split(",", 1)[1])))
    assert decoded.size == (32, 32)  # small images are embedded as they are (PNG), scaled by the browser
    first_base = results.rows_of("base").iloc[0]
    assert body[0][1] == first_base["prompt"] and body[0][2] == str(first_base["seed"])
    assert f"clip: {first_base[score_column('clip')]:.4g}" in body[0][4]
    assert f"ens: {first_base[score_column('ens')]:.4g}" in body[0][4]


def test_samples_table_is_sortable_by_numbers_and_differences(evaluation):
    results, out_dir = evaluation
    report = parse(out_dir / "report.html")
    assert report.sort_types == ["number", "text", "number", "text", "number", "number", "number", "number"]
    difference_headers = report.tables["samples"][0][6:]
    assert [h.split()[1] for h in difference_headers] == ["clip", "ens"]
    n_columns = len(report.sort_types)
    first_row_values = report.cell_values[:n_columns]
    aligned, base = results.rows_of("aligned").iloc[0], results.rows_of("base").iloc[0]
    assert float(first_row_values[6]) == aligned["score/clip"] - base["score/clip"]
    assert all(value is not None for value in report.cell_values)


def test_summary_and_win_rate_tables(evaluation):
    results, out_dir = evaluation
    report = parse(out_dir / "report.html")
    summary = report.tables["summary"]
    assert summary[0] == ["model", "clip", "ens"] and [row[0] for row in summary[1:]] == ["base", "aligned"]
    win_rates = report.tables["win-rates"]
    assert [row[:3] for row in win_rates[1:]] == [["aligned", "base", "clip"], ["aligned", "base", "ens"]]
    clip = results.win_rates()[0]
    assert win_rates[1][3] == f"{clip.win_rate:.1%} [{clip.low:.1%}, {clip.high:.1%}]"
    assert win_rates[1][4] == f"{clip.wins} / {clip.ties} / {clip.losses}"


def test_figures_grids_and_plots_are_written(evaluation):
    results, out_dir = evaluation
    report = parse(out_dir / "report.html")
    assert {image["alt"] for image in report.images} >= {"scores_clip", "scores_ens", "win_rates"}
    assert sorted(p.name for p in (out_dir / "plots").iterdir()) == ["scores_clip.png", "scores_ens.png", "win_rates.png"]
    grids = sorted((out_dir / "grids").glob("grid-*.png"))
    assert [g.name for g in grids] == ["grid-000.png"]  # 6 rows fit one page of 16
    assert Image.open(grids[0]).width > 2 * 128


def test_max_rows_limits_the_table_not_the_statistics(evaluation):
    results, _ = evaluation
    document = report_html(results, results.summary(), results.win_rates(), ReportSettings(max_rows=2))
    parser = ReportParser()
    parser.feed(document)
    assert len(parser.tables["samples"]) == 1 + 2
    assert len(parser.tables["win-rates"]) == 3

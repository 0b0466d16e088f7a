"""report.html: one self-contained file with a figure for every section the data has; the
Markdown's new sections; the JSON Schema of report.json on a real run; `autotune report`
re-rendering a run directory; and, where Chromium is installed, a real browser drawing it."""

from __future__ import annotations

import base64
import copy
import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from autotune.workflow import pipeline
from autotune.cli import main
from autotune.config import TrainConfig, TunedConfig
from autotune.report import classification_metrics, rerender
from autotune.report.html import render_html
from autotune.report.render import render_markdown, report_schema
from autotune.search import SearchBudget, TrialBudget

ASSETS = Path(__file__).parent / "assets"
FAST_TRIAL = TrialBudget(warmup_steps=1, window_s=0.05, windows=2, max_eval_batches=2, timeout_s=60)
IMG = re.compile(r'<figure id="([a-z-]+)"><img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def _cfg(**knobs) -> dict:
    return TrainConfig(**knobs).to_dict()


def _trial(number, tps, loss, **extra) -> dict:
    return {"number": number, "state": "complete", "value": tps, "status": "ok", "config": _cfg(micro_batch_size=8 * (number + 1)),
            "throughput_samples_per_s": tps, "val_loss": loss, "val_accuracy": 0.5, "mfu": 0.01, "peak_memory_bytes": 2**24,
            **extra}


def _history(epochs: int = 3) -> list[dict]:
    return [{"epoch": e, "train_loss": 1.0 / e, "lr": 0.01 / e, "samples": 96, "seconds": 0.5, "samples_per_s": 192.0,
             "val_loss": 1.1 / e, "val_accuracy": 0.5 + 0.1 * e} for e in range(1, epochs + 1)]


def _full_data() -> dict:
    """Every section: search with its analysis, selection, final run, classification."""
    trials = [_trial(0, 1000.0, 1.0, role="default"), _trial(1, 1500.0, 0.9, role="screening"),
              _trial(2, 800.0, 1.2, role="screening"),
              {"number": 3, "state": "fail", "value": None, "status": "oom", "reason": "out of memory", "config": _cfg()}]
    effect = {"knobs": {"micro_batch_size": [
        {"choice": 8, "trial": 0, "status": "ok", "value": 1000.0, "relative": 1.0, "throughput_samples_per_s": 1000.0, "note": ""},
        {"choice": 16, "trial": 1, "status": "ok", "value": 1500.0, "relative": 1.5, "throughput_samples_per_s": 1500.0, "note": ""},
        {"choice": 64, "trial": 3, "status": "oom", "value": None, "relative": None, "throughput_samples_per_s": None,
         "note": "out of memory"}]}, "default_trial": 0, "default_value": 1000.0, "reason": None}
    return {
        "model": {"file": "/x/tiny <model>.py", "sha256": "0" * 64},
        "hardware": {"fingerprint": "cpu-test", "device": "cpu", "cpu_model": "Test CPU", "logical_cores": 2,
                     "memory_total_bytes": 2**33, "gpus": [], "nvml": "no NVIDIA driver"},
        "search": {"space": {"name": "tiny", "params": {"micro_batch_size": {"choices": [8, 16, 24, 64]}}},
                   "gated": {"amp": {"fp16": "slow on a CPU"}}, "objective": "throughput", "trials": trials,
                   "budget": {"n_trials": 4, "timeout_s": None, "prune_below": 0.5, "trial": {"windows": 2, "window_s": 0.05}},
                   "param_importances": {"method": "m", "trials": 3, "importances": {"micro_batch_size": 1.0}, "reason": None},
                   "knob_effects": effect},
        "selection": {"objective": "throughput", "picked": 1, "picked_default": False,
                      "candidates": [{"trial": 1, "config": _cfg(micro_batch_size=16), "values": [1490.0, 1510.0],
                                      "median": 1500.0, "trial_value": 1500.0}],
                      "default": {"trial": 0, "config": _cfg()}, "speedup_vs_default": 1.5},
        "config": _cfg(micro_batch_size=16),
        "final": {"epochs_run": 3, "history": _history(), "seconds": 1.5, "samples_per_s": 192.0, "peak_memory_bytes": 2**24,
                  "val_loss": 0.4, "val_accuracy": 0.8, "mfu": 0.0123,
                  "time_to_target": {"target": 0.7, "metric": "val_accuracy", "seconds": 1.25, "epoch": 2}},
        "evaluation": classification_metrics([0, 1, 2, 2, 1], [0, 1, 2, 1, 1], ["a", "b", "c"]),
    }


def _figures(page: str) -> dict[str, bytes]:
    return {fig_id: base64.b64decode(b64) for fig_id, b64 in IMG.findall(page)}


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", png[16:24])


def _assert_self_contained(page: str) -> None:
    refs = re.findall(r'\b(?:src|href)\s*=\s*"([^"]*)"', page, flags=re.I)
    assert refs, "the page should have figures and in-page links"
    assert all(r.startswith(("data:image/png;base64,", "#")) for r in refs), [r[:40] for r in refs if not r.startswith(("data:", "#"))]
    lowered = page.lower()
    for banned in ("<script", "<link", "<iframe", "@import", "url(", "http://", "https://", "@font-face"):
        assert banned not in lowered, banned


def _expected_figures(data: dict) -> set[str]:
    """The figures the data calls for, decided here independently of the renderer."""
    search, final, ev = data.get("search") or {}, data.get("final") or {}, data.get("evaluation") or {}
    points = [t for t in search.get("trials", []) if t.get("throughput_samples_per_s") is not None
              and t.get("val_loss") is not None and t.get("status") != "duplicate"]
    expected = set()
    if len(points) >= 2:
        expected.add("fig-pareto")
    if any(t.get("value") is not None and t.get("state") == "complete" for t in search.get("trials", [])
           if t.get("status") not in ("infeasible", "duplicate")):
        expected.add("fig-history")
    if (search.get("param_importances") or {}).get("importances"):
        expected.add("fig-importances")
    if (search.get("knob_effects") or {}).get("knobs"):
        expected.add("fig-knob-effects")
    if final.get("history"):
        expected.add("fig-training-curves")
    if ev.get("kind", "classification") == "classification" and ev.get("confusion_matrix"):
        expected.add("fig-confusion-matrix")
    return expected


def test_the_html_has_every_section_and_figure_and_nothing_from_outside():
    data = _full_data()
    page = render_html(data)
    _assert_self_contained(page)
    figs = _figures(page)
    assert set(figs) == _expected_figures(data) == {"fig-history", "fig-pareto", "fig-importances", "fig-knob-effects",
                                                    "fig-training-curves", "fig-confusion-matrix"}
    assert page.count("<img ") == 6
    for png in figs.values():
        width, height = _png_size(png)
        assert width >= 400 and height >= 150
    for section in ("hardware", "search", "trials", "pareto", "importances", "knob-effects", "selection", "config",
                    "final", "evaluation"):
        assert f'<section id="{section}">' in page and f'href="#{section}"' in page
    assert "tiny &lt;model&gt;.py" in page and "<model>" not in page  # text is escaped
    assert "reached val_accuracy 0.7 after <strong>1.2 s</strong> (epoch 2)" in page
    assert "MFU 1.23%" in page
    assert '<tr class="picked">' in page and '<tr class="fail">' in page


def test_without_a_search_the_html_has_the_training_figures_only():
    data = _full_data()
    for key in ("search", "selection", "hardware"):
        del data[key]
    del data["final"]["mfu"], data["final"]["time_to_target"]
    page = render_html(data)
    _assert_self_contained(page)
    assert set(_figures(page)) == _expected_figures(data) == {"fig-training-curves", "fig-confusion-matrix"}
    for section in ("pareto", "importances", "knob-effects", "selection", "trials"):
        assert f'id="{section}"' not in page
    assert "MFU" not in page and "reached" not in page


def test_a_figure_that_cannot_be_drawn_is_named_and_the_rest_renders():
    data = _full_data()
    data["evaluation"]["confusion_matrix"] = [[1, 0, 0], [0, 2], [0, 1, 1]]  # ragged
    page = render_html(data)
    assert 'id="fig-confusion-matrix-error"' in page
    assert 'The figure "Confusion matrix: rows are the true class, columns the prediction." could not be drawn:' in page
    assert set(_figures(page)) == _expected_figures(data) - {"fig-confusion-matrix"}


def test_the_markdown_has_the_new_sections():
    data = _full_data()
    text = render_markdown(data)
    assert "Figures of the sections below are in `report.html` next to this file." in text
    pareto = text.split("## Throughput and validation loss: the Pareto front")[1].split("##")[0]
    # Trial 1 (1500/s, loss 0.9) beats trials 0 and 2 on both.
    assert [line.split("|")[1].strip() for line in pareto.splitlines() if line.startswith("| ") and "trial" not in line] == ["1"]
    assert "| micro_batch_size | 1.000 |" in text
    assert "| micro_batch_size | 16 | 1 | 1,500 | 1.50x | 1,500 |  |" in text
    assert "| micro_batch_size | 64 | 3 | - | - | - | out of memory |" in text
    assert "| micro_batch_size | 8 (default) | 0 | 1,000 | 1.00x |" in text
    assert "reached val_accuracy 0.7 after **1.2 s** (epoch 2)" in text and "MFU 1.23%" in text
    data["search"]["param_importances"] = {"method": "m", "trials": 1, "importances": None, "reason": "needs at least 2"}
    data["final"]["time_to_target"]["seconds"] = None
    text = render_markdown(data)
    assert "Parameter importances could not be computed: needs at least 2." in text
    assert "did not reach val_accuracy 0.7" in text


# --- a real run, shared by the tests below ------------------------------------------------


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    """`autotune run` on the tiny model: the default and two screening trials (enough for
    every analysis section), selection and 2 epochs of final training."""
    root = tmp_path_factory.mktemp("report-run")
    model = root / "tiny_mlp.py"
    shutil.copy(ASSETS / "tiny_mlp.py", model)
    opts = pipeline.RunOptions(out=root / "run", space=str(ASSETS / "tiny_space.yaml"),
                               budget=SearchBudget(n_trials=3, trial=FAST_TRIAL), progress=False)
    pipeline.run(model, opts, log=lambda _: None)
    return root / "run"


@pytest.mark.slow
def test_a_real_report_matches_the_schema_and_has_its_figures(real_run):
    jsonschema = pytest.importorskip("jsonschema")
    report = json.loads((real_run / "report.json").read_text())
    validator = jsonschema.Draft202012Validator(report_schema())
    validator.check_schema(report_schema())
    validator.validate(report)
    search = report["search"]
    assert search["param_importances"]["importances"] or search["param_importances"]["reason"]
    assert search["knob_effects"]["knobs"], search["knob_effects"]
    page = (real_run / "report.html").read_text()
    _assert_self_contained(page)
    assert set(_figures(page)) == _expected_figures(report)
    assert {"fig-pareto", "fig-knob-effects", "fig-training-curves", "fig-confusion-matrix"} <= set(_figures(page))
    if report["hardware"]["device"] == "cpu":  # the GPU knobs are ruled out, each with its reason
        gated = search["gated"]
        assert gated["compile"]["reduce-overhead"].startswith("no GPU: ")
        assert gated["fp32_precision"]["tf32"] == "no GPU: TF32 is a mode of NVIDIA's tensor cores (sm_80 and later)"
        assert gated["optimizer_impl"]["fused"].startswith("no GPU: foreach and fused optimizers")
        assert gated["expandable_segments"]["True"] == "no GPU: a setting of the CUDA caching allocator"
        markdown = (real_run / "report.md").read_text()
        assert "| expandable_segments | true | no GPU: a setting of the CUDA caching allocator |" in markdown


@pytest.mark.slow
def test_the_schema_rejects_a_report_that_breaks_it(real_run):
    jsonschema = pytest.importorskip("jsonschema")
    report = json.loads((real_run / "report.json").read_text())
    validator = jsonschema.Draft202012Validator(report_schema())
    breakages = {
        "final missing": lambda r: r.pop("final"),
        "unknown top-level key": lambda r: r.update(extra=1),
        "micro-batch as text": lambda r: r["config"].update(micro_batch_size="big"),
        "unknown trial state": lambda r: r["search"]["trials"][0].update(state="finished"),
        "trial without value": lambda r: r["search"]["trials"][0].pop("value"),
        "evaluation of no kind": lambda r: r["evaluation"].update(kind="ranking"),
        "importances as a list": lambda r: r["search"]["param_importances"].update(importances=[0.5]),
    }
    for name, breakage in breakages.items():
        broken = copy.deepcopy(report)
        breakage(broken)
        assert list(validator.iter_errors(broken)), name


@pytest.mark.slow
def test_autotune_report_rerenders_a_run_directory(real_run, tmp_path, capsys):
    run = tmp_path / "copy"
    shutil.copytree(real_run, run)
    markdown, page = (run / "report.md").read_text(), (run / "report.html").read_text()
    (run / "report.md").unlink()
    (run / "report.html").unlink()
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"wrote {run / 'report.md'}", f"wrote {run / 'report.html'}"]
    assert (run / "report.md").read_text() == markdown
    assert (run / "report.html").read_text() == page


def test_autotune_report_errors_name_the_file(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"autotune: error: {tmp_path / 'report.json'}: no such file.\n" in err
    assert "hint: Give the run directory that `autotune run` or `autotune train` wrote (it holds report.json)." in err
    (tmp_path / "report.json").write_text("{not json")
    assert main(["report", str(tmp_path)]) == 1
    assert f"autotune: error: {tmp_path / 'report.json'} is not valid JSON: Expecting property name" in capsys.readouterr().err
    (tmp_path / "report.json").write_text(json.dumps({"schema_version": 99, "model": {"file": "m.py"}, "config": {}}))
    assert main(["report", str(tmp_path)]) == 1
    assert "schema_version 99 is not supported; this autotune reads schema_version 1, 2." in capsys.readouterr().err
    (tmp_path / "report.json").write_text(json.dumps({"schema_version": 2, "model": {"file": "m.py"}}))
    assert main(["report", str(tmp_path)]) == 1
    assert f"{tmp_path / 'report.json'} lacks config, which every report has." in capsys.readouterr().err
    assert not (tmp_path / "report.md").exists() and not (tmp_path / "report.html").exists()


def test_autotune_report_has_help(capsys):
    with pytest.raises(SystemExit) as info:
        main(["report", "--help"])
    assert info.value.code == 0
    assert "usage: autotune report [-h] RUN_DIR" in capsys.readouterr().out


def test_a_version_1_report_still_renders(tmp_path):
    data = _full_data()
    for key in ("param_importances", "knob_effects", "objective"):
        del data["search"][key]
    del data["evaluation"]["kind"]
    (tmp_path / "report.json").write_text(json.dumps({"schema_version": 1, **data}))
    paths = rerender(tmp_path)
    page = paths["html"].read_text()
    assert set(_figures(page)) == {"fig-history", "fig-pareto", "fig-training-curves", "fig-confusion-matrix"}
    assert "## Parameter importances" not in paths["markdown"].read_text()


def test_a_regression_model_trains_and_reports(tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    model = tmp_path / "tiny_regression.py"
    shutil.copy(ASSETS / "tiny_regression.py", model)
    cfg = TrainConfig(micro_batch_size=16, epochs=2, lr=0.01, base_lr=0.01, warmup=0.0)
    TunedConfig(train=cfg, provenance={"note": "written by a test"}).save(tmp_path / "tuned.yaml")
    assert main(["train", str(model), "--config", str(tmp_path / "tuned.yaml"), "--out", str(tmp_path / "t"), "--no-progress"]) == 0
    report = json.loads((tmp_path / "t" / "report.json").read_text())
    jsonschema.Draft202012Validator(report_schema()).validate(report)
    assert report["final"]["val_accuracy"] is None and [r["epoch"] for r in report["final"]["history"]] == [1, 2]
    page = (tmp_path / "t" / "report.html").read_text()
    assert "fig-confusion-matrix" not in page and "fig-training-curves" in page
    ev = report["evaluation"]
    assert ev["kind"] == "regression" and ev["samples"] == 32
    assert ev["rmse"] ** 2 == pytest.approx(ev["mse"]) and ev["mse"] == pytest.approx(report["final"]["val_loss"], rel=1e-4)
    assert "R^2 (coefficient of determination)" in page


# --- a real browser -----------------------------------------------------------------------

CHROMIUM = next((p for p in (shutil.which("chromium"), "/usr/bin/chromium") if p and Path(p).exists()), None)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (CI installs it when it can)")
def test_chromium_draws_the_report(real_run, tmp_path):
    png = tmp_path / "report.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}", "--window-size=1280,4000",
           (real_run / "report.html").resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and png.is_file(), proc.stderr[-2000:]
    assert _png_size(png.read_bytes()) == (1280, 4000)
    from matplotlib.image import imread

    pixels = imread(png)[..., :3]
    # A page with tables and figures: many colours, and far from one flat background.
    colours = {tuple(p) for p in (pixels[::8, ::8].reshape(-1, 3) * 255).astype(int).tolist()}
    assert len(colours) > 50 and pixels.std() > 0.05


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (CI installs it when it can)")
def test_the_summary_card_is_on_the_first_screen_at_1280_by_800(real_run, tmp_path):
    # The report has no scripts; a copy of it gets one that writes where the browser laid
    # out the card into the title, which --dump-dom then prints.
    probe = ("<script>const r = document.getElementById('summary').getBoundingClientRect();"
             "const t = document.querySelector('table.trials').getBoundingClientRect();"
             "document.title = 'CARD ' + [r.top, r.bottom, r.left, r.right, t.width].join(' ');</script>")
    page = tmp_path / "probe.html"
    page.write_text((real_run / "report.html").read_text().replace("</body>", probe + "</body>"))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
           "--window-size=1280,800", "--dump-dom", page.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    found = re.search(r"<title>CARD ([-\d. ]+)</title>", proc.stdout)
    assert proc.returncode == 0 and found, proc.stderr[-2000:]
    top, bottom, left, right, trials_width = map(float, found.group(1).split())
    assert 0 <= top < bottom <= 800 and 0 <= left < right <= 1280
    assert trials_width <= 1280 - 2 * 32  # the wide trials table fits the page without scrolling

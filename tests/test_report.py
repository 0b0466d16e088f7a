"""The Markdown report: the trial and selection tables name the knobs beyond batch and
precision where they differ from their defaults."""

from __future__ import annotations

from autotune.config import TrainConfig
from autotune.report.render import render_markdown


def _trial(number: int, **knobs) -> dict:
    return {"number": number, "state": "COMPLETE", "config": TrainConfig(**knobs).to_dict(),
            "throughput_samples_per_s": 1000.0, "compile_seconds": 14.25 if knobs.get("compile") else 0.0}


def test_the_trial_table_shows_the_other_knobs_that_are_set():
    data = {
        "model": {"file": "model.py"},
        "search": {"space": {"name": "default", "params": {"compile": {"choices": [False, True]}}}, "trials": [
            _trial(0),
            _trial(1, cpu_threads=4, channels_last=True, cudnn_benchmark=True, compile="reduce-overhead",
                   fp32_precision="tf32", optimizer_impl="fused", expandable_segments=True, schedule="onecycle"),
            _trial(2, compile=True),  # a report written when compile was a switch
            _trial(3, compile=False),
        ]},
    }

    lines = render_markdown(data).splitlines()

    header = next(line for line in lines if line.startswith("| # |"))
    assert "| ckpt | other knobs | samples/s |" in header
    assert "| false | - | 1,000 |" in next(line for line in lines if line.startswith("| 0 |"))
    assert (
        "| false | cpu_threads 4, channels_last, cudnn_benchmark, compile reduce-overhead (14.2 s), fp32_precision tf32, "
        "optimizer_impl fused, expandable_segments, schedule onecycle | 1,000 |"
        in next(line for line in lines if line.startswith("| 1 |"))
    )
    assert "| false | compile default (14.2 s) | 1,000 |" in next(line for line in lines if line.startswith("| 2 |"))
    assert "| false | - | 1,000 |" in next(line for line in lines if line.startswith("| 3 |"))


def test_the_selection_table_names_the_other_knobs_too():
    tuned = TrainConfig(micro_batch_size=64, cpu_threads=2).to_dict()
    data = {
        "model": {"file": "model.py"},
        "selection": {
            "objective": "throughput", "picked": 3,
            "candidates": [{"trial": 3, "config": tuned, "trial_value": 900.0, "median": 880.0, "values": [870.0, 890.0]}],
            "default": {"trial": 0, "config": TrainConfig().to_dict()},
        },
    }

    text = render_markdown(data)

    assert "| trial 3 **picked** | 64 x 1, amp off, workers 0, cpu_threads 2 | 900 | 880 | 870, 890 |" in text
    assert "passed over" not in text

    data["selection"]["noise_scale"] = {"estimate": 84.0, "low": 58.0, "high": 121.0, "method": "groups",
                                         "method_fallback_reason": "RuntimeError: in-place operation", "basis": "b"}
    assert ("Gradient noise scale 84 (95% interval [58, 121]; from group gradient norms, since per-example gradients "
            "failed (RuntimeError: in-place operation); reported, not used).") in render_markdown(data)
    data["selection"]["passed_over"] = {"trial": 5, "effective_batch": 128, "reference_batch": 32, "lead": 1.12,
                                           "needed": 1.3}
    assert ("Trial 5 had the best level, at effective batch 128, but led the default by 1.12x, less than the 1.30x "
            "a pick at another batch than the reference 32 needs") in render_markdown(data)


def test_the_summary_card_says_what_to_use_its_speed_up_and_when_the_tuning_pays_back():
    from autotune.report import format as f

    default = {"micro_batch_size": 32, "accumulation_steps": 1, "amp": "off", "lr": 0.002, "cudnn_benchmark": False}
    data = {"config": {**default, "micro_batch_size": 256, "cudnn_benchmark": True, "lr": 0.005657},
            "selection": {"objective": "throughput", "speedup_vs_default": 1.25, "tuning_seconds": 95.0,
                          "default": {"config": default}},
            "final": {"seconds": 100.0}}
    card = dict(f.summary_card(data))
    assert card["Use"] == "micro_batch_size 32 -> 256; cudnn_benchmark false -> true; lr 0.002 -> 0.005657"
    assert card["Speed-up"] == "1.25x the default's samples/s"
    assert card["Tuning took"] == "95 s"
    # 95 s at 0.25 s saved per second of tuned training: 380 s
    assert card["Pays back"].startswith("after 6.3 min of training at this size with the tuned config")
    assert card["Pays back"].endswith("this run trained for 100 s, 26% of that")
    data["selection"]["speedup_vs_default"] = 0.98
    assert dict(f.summary_card(data))["Pays back"].startswith("never")
    assert f.summary_card({"config": default, "selection": {}}) is None  # autotune train: no search, no card
    threads = f.changes_from_default({**default, "cpu_threads": 2}, {**default, "cpu_threads": 0})
    assert threads == ["cpu_threads torch's default -> 2"]

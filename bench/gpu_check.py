"""GPU check: every paper preset at full size with random weights under ``trainer=gpu`` on a generated tree.

Usage: ``python bench/gpu_check.py [--steps 10] [--timeout 100] [--presets padim_r18 ...]`` (``make gpu-check``).
Each preset runs ``python -m anomaly.train``'s own path in a subprocess of its own (with a timeout): N training
steps, the engine's validation and test on one category of the synthetic set in MVTec AD layout (generated in
a temporary folder), and prints one row: training steps/s (the timed batches after the first), test images/s,
peak GPU memory (``torch.cuda.max_memory_allocated``), whether the last loss was finite and ``metrics.json``
written. A failing preset is reported in its row; the rest go on. Then the suite's CUDA-only tests run.
Budget: under 8 minutes on one H100 (presets left when ``--budget`` seconds are spent are reported skipped).

Without CUDA (or with ``--dry-run``) it checks that every preset composes with its overrides, says so in one
line and exits 0. ``--device cpu --presets <p> --override k=v ...`` runs the real path on the CPU with tiny
sizes (the suite's smoke test of this script).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MARK = "GPU_CHECK_RESULT "
CATEGORY = "wood"
# Each paper preset with random weights (no download) and what a generated tree cannot give it; every
# override beyond ``model.*weights*=none`` is named here.
PRESETS: dict[str, list[str]] = {
    "padim_r18": ["model.backbone.weights=none"],
    "padim_wr50": ["model.backbone.weights=none"],
    "diad_mvtec": ["model.backbone.weights=none", "model.unet.weights=null", "feasibility.from_scratch=true",
                   "model.context.kind=empty",     # CLIP's empty prompt needs the SD folder's text encoder
                   "model.latent.fit_steps=2"],    # no SD VAE: the autoencoder is fitted for 2 steps first
    "ddpm_paper": [],
    "realnet_mvtec": ["model.backbone.weights=none",
                      "synthesis=perlin"],         # SDAS needs a bank made by a trained DDPM
    "differnet_mvtec": ["model.backbone.weights=none"],
    "cdflow_mvtec": ["model.backbone.weights=none"],
}
STATISTICS = {"padim_r18", "padim_wr50"}  # one epoch of statistics, no optimizer steps
GENERATORS = {"ddpm_paper"}  # SDAS's DDPM: no validation metric, no test
CUDA_TESTS = ["tests/test_configs.py::test_trainer_options_instantiate"]  # skipped without CUDA


def overrides(preset: str, root: Path, steps: int, device: str, extra: list[str]) -> list[str]:
    """The command line of one preset's run."""
    args = [f"experiment={preset}", "data=mvtec", f"data.root={root}", f"data.category={CATEGORY}",
            "data.num_workers=2", "logger=csv", "trainer.enable_progress_bar=false",
            "trainer=gpu" if device == "cuda" else "trainer=cpu", *PRESETS[preset]]
    if preset not in STATISTICS:
        args += ["trainer.max_epochs=-1", f"trainer.max_steps={steps}", "trainer.check_val_every_n_epoch=null",
                 f"++trainer.val_check_interval={steps}"]
    return args + extra


def composes(args: list[str]) -> str:
    """``ok`` when the config composes and resolves, else the first line of the error."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    import anomaly.config.resolvers  # noqa: F401 - ${anomaly.*} resolvers
    from anomaly.conf import CONF_DIR

    try:
        GlobalHydra.instance().clear()
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", overrides=args)
        OmegaConf.to_container(cfg.model, resolve=True)
        return "ok"
    except Exception as error:  # noqa: BLE001 - reported in the preset's row
        return str(error).splitlines()[0]


def child(args: list[str]) -> None:
    """One run through ``anomaly.train``'s entry point with a timing callback; prints its result line."""
    import lightning as L
    import torch

    import anomaly.engine.run as run
    import anomaly.train

    class Timer(L.Callback):
        def __init__(self) -> None:
            self.train: list[float] = []
            self.test: list[tuple[float, int]] = []
            self.loss: float | None = None
            self._start = 0.0

        def _now(self) -> float:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            return time.perf_counter()

        def on_train_batch_start(self, *_: Any) -> None:
            self._start = self._now()

        def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, *_: Any) -> None:
            self.train.append(self._now() - self._start)
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
            if isinstance(loss, torch.Tensor):
                self.loss = float(loss.detach().float().cpu())

        def on_test_batch_start(self, *_: Any) -> None:
            self._start = self._now()

        def on_test_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, *_: Any) -> None:
            self.test.append((self._now() - self._start, len(batch["image"])))

    timer = Timer()
    build = run.build_callbacks
    run.build_callbacks = lambda *a, **k: [*build(*a, **k), timer]
    sys.argv = ["anomaly.train", *args]
    error = None
    try:
        anomaly.train.main()
    except SystemExit as exit_:
        error = None if exit_.code in (0, None) else f"exit {exit_.code}"
    except Exception as raised:  # noqa: BLE001 - reported in the preset's row
        error = f"{type(raised).__name__}: {str(raised).splitlines()[0] if str(raised) else ''}"
    timed = timer.train[1:] or timer.train
    test_s, test_n = sum(t for t, _ in timer.test), sum(n for _, n in timer.test)
    result = {
        "error": error,
        "steps_per_s": len(timed) / sum(timed) if timed and sum(timed) > 0 else None,
        "test_images_per_s": test_n / test_s if test_s > 0 else None,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
        "loss_finite": None if timer.loss is None else math.isfinite(timer.loss),
        "metrics": any(Path.cwd().rglob("metrics.json")),
    }
    print(MARK + json.dumps(result), flush=True)


def run_preset(preset: str, args: list[str], timeout: float, folder: Path) -> dict[str, Any]:
    """One preset in its own process and folder; a crash or a timeout becomes the row's error."""
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", *args], cwd=folder,
                              capture_output=True, text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO)})
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", "wall_s": timeout}
    lines = [line for line in done.stdout.splitlines() if line.startswith(MARK)]
    result = json.loads(lines[-1][len(MARK):]) if lines else {"error": f"exit {done.returncode}"}
    if result.get("error"):
        last = [line for line in done.stderr.strip().splitlines() if line.strip()]
        result["error"] = f"{result['error']}: {last[-1][:160]}" if last else result["error"]
    result["wall_s"] = time.perf_counter() - start
    return result


def table(rows: dict[str, dict[str, Any]]) -> str:
    def fmt(value: Any, spec: str = ".2f") -> str:
        if value is None:
            return "n/a"
        if isinstance(value, bool):
            return "yes" if value else "NO"
        return format(value, spec)

    out = [f"{'preset':<16} {'steps/s':>8} {'test img/s':>10} {'peak GiB':>9} {'loss finite':>11} {'metrics':>7} "
           f"{'wall s':>7}  error"]
    for name, r in rows.items():
        out.append(f"{name:<16} {fmt(r.get('steps_per_s')):>8} {fmt(r.get('test_images_per_s'), '.1f'):>10} "
                   f"{fmt(r.get('peak_gib')):>9} {fmt(r.get('loss_finite')):>11} {fmt(r.get('metrics')):>7} "
                   f"{fmt(r.get('wall_s'), '.0f'):>7}  {r.get('error') or ''}")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--steps", type=int, default=10, help="training steps per preset")
    parser.add_argument("--timeout", type=float, default=100, help="seconds per preset")
    parser.add_argument("--budget", type=float, default=420, help="seconds for all presets; the rest are skipped")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--override", nargs="*", default=[], help="extra key=value overrides for every preset")
    parser.add_argument("--dry-run", action="store_true", help="only check that each preset composes")
    parser.add_argument("--no-tests", action="store_true", help="skip the suite's CUDA-only tests")
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child)
        return 0

    import torch

    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        root = Path(tmp) / "mvtec"
        plans = {p: overrides(p, root, args.steps, args.device, args.override) for p in args.presets}
        if args.dry_run or (args.device == "cuda" and not torch.cuda.is_available()):
            failed = {p: status for p, a in plans.items() if (status := composes(a)) != "ok"}
            for preset, status in failed.items():
                print(f"  {preset}: does not compose: {status}")
            reason = "--dry-run" if args.dry_run else "No CUDA device on this machine"
            print(f"{reason}: nothing timed; {len(plans) - len(failed)} of {len(plans)} paper presets compose "
                  "under trainer=gpu with their overrides.")
            return 1 if failed else 0
        from anomaly.data.synthetic import ensure_synthetic

        ensure_synthetic(root, seed=0, image_size=256)
        device = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU"
        print(f"GPU check on {device}: {args.steps} training steps, validation and test on {CATEGORY} "
              f"({root}); torch {torch.__version__}", flush=True)
        rows: dict[str, dict[str, Any]] = {}
        start = time.perf_counter()
        for preset, plan in plans.items():
            left = args.budget - (time.perf_counter() - start)
            if left < 20:
                rows[preset] = {"error": f"skipped: the {args.budget:.0f} s budget is spent"}
                continue
            rows[preset] = run_preset(preset, plan, min(args.timeout, left), Path(tmp) / preset)
            if preset in GENERATORS:
                rows[preset]["metrics"] = None  # a generator has no test step
            print(f"  {preset}: {'failed' if rows[preset].get('error') else 'done'} "
                  f"({rows[preset]['wall_s']:.0f} s)", flush=True)
        print(table(rows))
        code = 0 if all(not r.get("error") for r in rows.values()) else 1
    if args.device == "cuda" and not args.no_tests:
        print("CUDA-only tests:", " ".join(CUDA_TESTS), flush=True)
        tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-rs", *CUDA_TESTS], cwd=REPO,
                               timeout=120)
        code = code or tests.returncode
    return code


if __name__ == "__main__":
    sys.exit(main())

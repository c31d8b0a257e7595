"""Every command the README shows, pasted as written.

The README's ```sh blocks are read line by line, and every line must have an entry in PLANS
(a new line without one fails `test_every_readme_line_has_a_plan`; an entry whose line left
the README fails too). Each line is

- parsed, as written, by the real argument parser (`test_readme_line_parses`); a train line's
  config is also resolved and loaded, from the checkout, as `difflab train` would;
- run (`test_readme_line_runs`) in a scratch folder laid out like the checkout (configs/ and
  .venv/ linked into it; the inputs a user brings -- shirt.png, bag.png, mask.png, photo.jpg,
  other_library.npz -- made by the test). The test id starts with "as written" when the line
  ran exactly as printed; otherwise with what was changed: a flag's value replaced
  ("-n 64->8") and flags added ("+--steps 2 +tiny net": a 2-step run of a small network
  instead of minutes of training; "+--standalone" and 2 processes for torchrun).
  `bash scripts/run_tests.sh` is not run (it runs this suite): its syntax is checked.

The ```python blocks run with the substitutions in PY_PLANS (fewer samples), and a command.sh
written by a real training run is pasted into a shell in another directory, with difflab off
PATH. Nothing is installed: setup.sh runs only its launcher step, into a scratch folder.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from difflab.cli import main
from difflab.cli.inputs import resolve_config
from difflab.cli.parser import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
VENV_BIN = Path(sys.executable).parent  # the environment running these tests
BARE_PATH = "/usr/bin:/bin"  # a shell with no difflab on PATH


def code_blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README, flags=re.M | re.S)


def words(line: str) -> list[str]:
    """What the shell makes of a line: words, quotes removed, the trailing # comment dropped."""
    return shlex.split(line, comments=True)


def key(line: str) -> str:
    return shlex.join(words(line))


SH_LINES = [
    line.strip()
    for block in code_blocks("sh")
    for line in block.splitlines()
    if line.strip() and not line.lstrip().startswith("#")
]

# ---------------------------------------------------------------------------- plans
TINY_SETS = (
    "--set", "model.overrides.base_channels=16",
    "--set", "model.overrides.groups=4",
    "--set", "model.overrides.channel_mults=[1, 2]",
    "--set", "model.overrides.attention_resolutions=[]",
    "--set", "train.batch_size=16",
    "--set", "data.limit=200",
    "--set", "sample.steps=5",
)  # fmt: skip
TINY_TRAIN = ("--steps", "2", *TINY_SETS)


@dataclass(frozen=True)
class Plan:
    """How a README line runs here: `values` replace the value after a flag, `extra` is
    appended, `options` go right after the program (torchrun's own), `env` is set."""

    values: tuple[tuple[str, str], ...] = ()
    extra: tuple[str, ...] = ()
    options: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    run: bool = True

    def label(self, argv: list[str]) -> str:
        """"as written", or what changed: "-n 64->8 +--steps 2 +tiny net"."""
        if not self.run:
            return "not run"
        parts = [f"{k}={v}" for k, v in self.env]
        parts += [f"+{o}" for o in self.options]
        parts += [
            f"{flag} {argv[argv.index(flag) + 1] if flag in argv else '?'}->{value}"
            for flag, value in self.values
        ]
        extra = list(self.extra)
        if extra[:2] == ["--steps", "2"]:
            parts.append("+--steps 2")
            extra = extra[2:]
        elif extra[:1] == ["--steps"]:
            parts.append(f"+--steps {extra[1]}")
            extra = extra[2:]
        if tuple(extra[: len(TINY_SETS)]) == TINY_SETS:
            parts.append("+tiny net")
            extra = extra[len(TINY_SETS) :]
        parts += [f"+{shlex.join(extra)}"] if extra else []
        return " ".join(parts) or "as written"

    def apply(self, argv: list[str]) -> list[str]:
        argv = list(argv)
        for flag, value in self.values:
            assert flag in argv, f"{flag} is no longer in {shlex.join(argv)}: update PLANS"
            argv[argv.index(flag) + 1] = value
        return [argv[0], *self.options, *argv[1:], *self.extra]


AS_WRITTEN = Plan()
TRAIN = Plan(extra=TINY_TRAIN)
FEW_REFERENCE = ("--n-reference", "100")
PLANS = {
    key(line): plan
    for line, plan in {
        # Two commands: run_main trains for minutes; run_tests runs this very suite.
        "bash scripts/run_main.sh": Plan(
            env=(("DIFFLAB_SETUP", "0"), ("OUT", "<tmp>")), extra=TINY_TRAIN
        ),
        "bash scripts/run_tests.sh": Plan(run=False),
        'export PATH="$PWD/.venv/bin:$PATH"': AS_WRITTEN,
        # The command line
        "difflab train fashion_mnist --minutes 10 --out runs/fashion": TRAIN,
        "difflab train configs/fashion_mnist.toml --set train.lr=1e-3 "
        "--set diffusion.schedule=linear": TRAIN,
        "difflab train fashion_mnist --out runs/fashion --resume": Plan(
            extra=("--steps", "4", *TINY_SETS)
        ),
        "difflab train fashion_mnist --set train.fid_every=1000 --out runs/fid": TRAIN,
        ".venv/bin/torchrun --nproc_per_node 4 -m difflab.cli train fashion_mnist --out runs/ddp":
            Plan(
                options=("--standalone",), values=(("--nproc_per_node", "2"),), extra=TINY_TRAIN
            ),
        "difflab sample fashion-mnist -n 64 --out samples.png --gif reverse.gif": AS_WRITTEN,
        "difflab sample mnist-digits-cond --class 7 --guidance 3 -n 64 --out sevens.png": Plan(
            values=(("-n", "8"),)
        ),
        "difflab sample fashion-mnist-cond --class all --guidance 3 -n 80 --out clothes.png":
            Plan(values=(("-n", "10"),)),
        'difflab sample fashion-text --prompt "a warm winter coat" -n 16 --out coats.png': Plan(
            values=(("-n", "2"),)
        ),
        'difflab sample shapes-text --prompt "a green circle" --prompt "a purple square" '
        '--prompt "an orange triangle" --prompt "three circles" --prompt "two red triangles" '
        '--prompt "a red circle to the left of a blue square" '
        '--prompt "a yellow square above a green circle" '
        '--prompt "a purple square and a green triangle" -n 64 --out shapes.png': Plan(
            values=(("-n", "8"),)
        ),
        'difflab sample fashion-text-attributes --prompt "a black tee for the summer" '
        '--prompt "a sweater with wide stripes" -n 16 --out tees.png': Plan(
            values=(("-n", "2"),)
        ),
        "difflab eval shapes-text --geneval": Plan(
            extra=("--images-per-prompt", "1", "--steps", "2")
        ),
        "difflab sample fashion-mnist-cond --class shirt -n 1 --bare --scale 1 "
        "--out one_shirt.png": AS_WRITTEN,
        'difflab img2img fashion-text shirt.png --prompt "a dress" --out dresses.png':
            AS_WRITTEN,
        'difflab inpaint fashion-text bag.png mask.png --prompt "a handbag" --out filled.png':
            AS_WRITTEN,
        'difflab img2img fashion-text photo.jpg --resize --prompt "a dress"': AS_WRITTEN,
        "difflab sample runs/fashion/last -n 10000 --out samples.npz": Plan(
            values=(("-n", "8"),)
        ),
        "difflab eval runs/fashion/last --samples 10000 --nll": Plan(
            values=(("--samples", "16"),),
            extra=("--nll-images", "8", "--nll-timesteps", "2", *FEW_REFERENCE),
        ),
        "difflab eval --images other_library.npz --dataset fashion_mnist": Plan(
            extra=FEW_REFERENCE
        ),
        "difflab viz forward --out forward.png": AS_WRITTEN,
        "difflab viz schedules --out schedules.png": AS_WRITTEN,
        "difflab viz toy1d --out toy1d.png": AS_WRITTEN,
        "difflab info fashion-mnist": AS_WRITTEN,
        "difflab export runs/fashion/last my-model --fp16": AS_WRITTEN,
    }.items()
}
FASHION_RUN = key("difflab train fashion_mnist --minutes 10 --out runs/fashion")


def difflab_argv(argv: list[str]) -> list[str] | None:
    """The arguments difflab's parser gets from a line (None: not a difflab line)."""
    if argv[0] == "difflab":
        return argv[1:]
    if argv[0].endswith("torchrun"):
        return argv[argv.index("difflab.cli") + 1 :]
    return None


def test_every_readme_line_has_a_plan():
    assert SH_LINES, "no ```sh blocks found in README.md"
    missing = [line for line in SH_LINES if key(line) not in PLANS]
    assert not missing, f"README lines without an entry in PLANS: {missing}"
    stale = set(PLANS) - {key(line) for line in SH_LINES}
    assert not stale, f"PLANS entries no longer in the README: {sorted(stale)}"
    assert not [line for line in SH_LINES if line.endswith("\\")], "continued lines unsupported"


def test_no_readme_line_is_a_pipeline():
    """A line must run pasted: no `a | b | c` alternatives that the shell would pipe."""
    for line in SH_LINES:
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.commenters = "#"
        assert not {"|", "||", "&", ";"} & set(lexer), line


# ---------------------------------------------------------------------------- parse
DIFFLAB_LINES = [line for line in SH_LINES if difflab_argv(words(line)) is not None]


@pytest.mark.parametrize("line", DIFFLAB_LINES, ids=key)
def test_readme_line_parses(line, monkeypatch):
    """As written, by the real parser; train configs resolved and loaded from the checkout."""
    from difflab.checkpoints.names import resolve_checkpoint
    from difflab.config import load_config

    monkeypatch.chdir(ROOT)
    args = build_parser().parse_args(difflab_argv(words(line)))
    if args.command == "train":
        sets = list(args.set or [])
        if args.minutes is not None:
            sets.append(f"train.minutes={args.minutes}")
        if args.steps is not None:
            sets.append(f"train.max_steps={args.steps}")
        load_config(resolve_config(args.config), sets)
    name = getattr(args, "checkpoint", None)
    if name and "/" not in name:  # a shipped model
        assert resolve_checkpoint(name).is_dir()


# ---------------------------------------------------------------------------- run
@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A scratch folder laid out like the checkout, with the inputs a user would bring."""
    d = tmp_path_factory.mktemp("readme")
    (d / "configs").symlink_to(ROOT / "configs")
    (d / ".venv").symlink_to(Path(sys.prefix))  # for .venv/bin/torchrun, as written
    y, x = np.mgrid[:28, :28]
    shirt = np.where((abs(x - 14) < 8) & (y > 4) & (y < 25), 200, 0).astype(np.uint8)
    Image.fromarray(shirt).save(d / "shirt.png")
    Image.fromarray(shirt[::-1].copy()).save(d / "bag.png")
    Image.fromarray(np.where(y < 14, 255, 0).astype(np.uint8)).save(d / "mask.png")
    photo = np.kron(shirt, np.ones((2, 2), np.uint8))[:, 4:]  # 48x56: a picture of another size
    Image.fromarray(photo).convert("RGB").save(d / "photo.jpg")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 1, 28, 28), dtype=np.uint8)
    np.savez(d / "other_library.npz", images=images)
    return d


def run_in_process(argv: list[str], cwd: Path) -> int:
    with contextlib.chdir(cwd):
        return main(argv)


@pytest.fixture(scope="module")
def fashion_run(work):
    """The README's first training line (runs/fashion), which later lines read."""
    argv = PLANS[FASHION_RUN].apply(words(FASHION_RUN))
    assert run_in_process(argv[1:], work) == 0
    return work / "runs" / "fashion"


def reads_fashion_run(argv: list[str]) -> bool:
    return any(w == "runs/fashion" or w.startswith("runs/fashion/") for w in argv)


def feature_net_at_hand(dataset: str) -> bool:
    """Shipped with difflab or cached: eval then trains no classifier (2-3 CPU minutes)."""
    from difflab.metrics import features

    try:
        features.feature_extractor(dataset, train=False, verbose=False)
    except FileNotFoundError:
        return False
    return True


def run_id(line: str) -> str:
    plan = PLANS.get(key(line))
    return f"{plan.label(words(line)) if plan else '?'}: {key(line)}"


@pytest.mark.parametrize("line", SH_LINES, ids=run_id)
def test_readme_line_runs(line, work, request, capsys):
    plan = PLANS[key(line)]
    argv = words(line)
    if not plan.run:
        pytest.skip("not run: it runs this test suite (test_scripts_are_valid_bash parses it)")
    if argv[0] == "difflab":
        if reads_fashion_run(argv):
            request.getfixturevalue("fashion_run")
        if argv[1] == "eval" and not feature_net_at_hand("fashion_mnist"):
            pytest.skip("no shipped or cached fashion_mnist feature net (minutes to train)")
        if key(line) != FASHION_RUN:
            rc = run_in_process(plan.apply(argv)[1:], work)
            assert rc == 0, capsys.readouterr().err[-3000:]
        check_outputs(argv, work, capsys.readouterr().out)
    elif argv[0] == ".venv/bin/torchrun":
        run_torchrun(plan, argv, work)
    elif argv[:2] == ["bash", "scripts/run_main.sh"]:
        run_main_sh(plan, work)
    elif argv[0] == "export":
        run_path_line(line)
    else:
        pytest.fail(f"no way to run {line!r}: add one here")


def check_outputs(argv: list[str], work: Path, stdout: str) -> None:
    """What the line promises is there."""
    args = build_parser().parse_args(argv[1:])
    if args.command == "train":
        from difflab.checkpoints.store import load_checkpoint

        run = work / (args.out or f"runs/{Path(args.config).stem}")
        assert (run / "last").is_dir() and (run / "samples.png").is_file()
        command = (run / "command.sh").read_text()
        assert f"cd {shlex.quote(str(work))} &&" in command
        # a resumed run's command.sh is the one command of the whole run: without --resume
        assert shlex.join(a for a in argv[1:] if a != "--resume") in command
        if args.resume:  # 2 steps, then resumed to 4
            assert load_checkpoint(run / "last", with_training_state=True).state["step"] == 4
    elif args.command == "eval" and args.geneval:
        assert "overall (mean of the six categories)" in stdout
    elif args.command == "eval":
        assert "FID" in stdout
    elif args.command == "info":
        assert stdout.startswith("checkpoint ")
    elif args.command == "export":
        assert (work / args.out / "config.json").is_file()
    else:  # sample, img2img, inpaint, viz
        assert (work / args.out).is_file()
        if getattr(args, "gif", None):
            assert (work / args.gif).is_file()


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def run_torchrun(plan: Plan, argv: list[str], work: Path) -> None:
    if not (work / argv[0]).is_file():
        pytest.skip(f"no {argv[0]} in this environment ({sys.prefix})")
    proc = subprocess.run(
        plan.apply(argv), cwd=work, env=env(), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = work / "runs" / "ddp"
    assert (run / "last").is_dir()
    command = (run / "command.sh").read_text()
    assert "-m torch.distributed.run --nproc_per_node 2 -m difflab.cli train fashion_mnist" in (
        command
    )


def run_main_sh(plan: Plan, work: Path) -> None:
    """run_main.sh without its install step (DIFFLAB_SETUP=0), into a scratch OUT."""
    if not (ROOT / ".venv" / "bin" / "difflab").is_file():
        pytest.skip("run_main.sh runs the checkout's .venv, and there is none")
    out = work / "runs" / "run_main"
    variables = {k: (str(out) if v == "<tmp>" else v) for k, v in plan.env}
    proc = subprocess.run(
        ["bash", "scripts/run_main.sh", *plan.extra],
        cwd=ROOT, env=env(**variables), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    # it says where it wrote its pictures, and what to type next
    assert f"samples: {out / 'samples.png'}" in proc.stdout
    assert "run_main: " in proc.stdout.splitlines()[-1]
    for name in ("forward_process.png", "samples.png", "reverse_process.gif", "loss.png"):
        assert (out / name).is_file(), name


def run_path_line(line: str) -> None:
    """The line for a machine without the launcher puts the checkout's difflab on PATH."""
    if not (ROOT / ".venv" / "bin" / "difflab").is_file():
        pytest.skip("no .venv/bin/difflab in this checkout")
    proc = subprocess.run(
        ["bash", "-c", f"{line}\ncommand -v difflab"],
        cwd=ROOT, env=env(PATH=BARE_PATH), capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(ROOT / ".venv" / "bin" / "difflab")


def test_scripts_are_valid_bash():
    """run_tests.sh is not run here (it runs this suite); the scripts must at least parse."""
    for script in ("setup.sh", "run_main.sh", "run_tests.sh"):
        proc = subprocess.run(
            ["bash", "-n", str(ROOT / "scripts" / script)], capture_output=True, text=True
        )
        assert proc.returncode == 0, f"{script}: {proc.stderr}"


# ---------------------------------------------------------------------------- python
@dataclass(frozen=True)
class PyPlan:
    marker: str  # a string only this block has
    substitutions: tuple[tuple[str, str], ...]  # (old, new): fewer samples


PY_PLANS = {
    "text to image": PyPlan("gen.inpaint(", (("gen.generate(8,", "gen.generate(2,"),)),
    "API in ten lines": PyPlan(
        "gaussian_oracle", (("generate(16,", "generate(2,"), ("generate(8,", "generate(2,"))
    ),
}


def test_every_python_block_has_a_plan():
    blocks = code_blocks("python")
    assert blocks
    for block in blocks:
        assert sum(p.marker in block for p in PY_PLANS.values()) == 1, block


def py_id(name: str) -> str:
    changes = " and ".join(f"{old}->{new}" for old, new in PY_PLANS[name].substitutions)
    return f"{name}: {changes}" if changes else f"{name}: as written"


@pytest.mark.parametrize("name", list(PY_PLANS), ids=py_id)
def test_readme_python_block_runs(name, work, monkeypatch):
    plan = PY_PLANS[name]
    (code,) = [b for b in code_blocks("python") if plan.marker in b]
    for old, new in plan.substitutions:
        assert old in code, f"{old!r} is no longer in the {name} block: update PY_PLANS"
        code = code.replace(old, new)
    monkeypatch.chdir(work)
    ns: dict = {}
    exec(compile(code, f"README.md ({name})", "exec"), ns)
    if name == "text to image":
        assert tuple(ns["shirt"].shape) == (1, 1, 28, 28)
    else:
        assert tuple(ns["images"].shape) == (2, 1, 28, 28) and str(ns["images"].dtype) == (
            "torch.uint8"
        )
        assert len(ns["sevens"]) == 2 and len(ns["shoes"]) == 2
        x = ns["x"]  # the comment's claim: mean ≈ 0.3, std ≈ 0.49
        assert abs(float(x.mean()) - 0.3) < 0.03 and abs(float(x.std()) - 0.49) < 0.03


# ---------------------------------------------------------------------------- command.sh
def test_command_sh_reruns_pasted_in_another_directory(tmp_path):
    """A run's command.sh, pasted into a shell elsewhere with no difflab on PATH, reruns it
    where it ran (its --out is relative), once the run it reproduces is moved away."""
    exe = VENV_BIN / "difflab"
    if not exe.is_file():
        pytest.skip(f"no difflab executable beside {sys.executable}")
    started, elsewhere = tmp_path / "started", tmp_path / "elsewhere"
    started.mkdir()
    elsewhere.mkdir()
    argv = ["train", "digits8", "--steps", "2", "--out", "run", "--set", "train.sample_every=1000"]
    first = subprocess.run(
        [str(exe), *argv], cwd=started, env=env(), capture_output=True, text=True, timeout=600
    )
    assert first.returncode == 0, first.stderr[-3000:]
    script = started / "run" / "command.sh"
    assert os.access(script, os.X_OK)
    text = script.read_text()
    assert f"cd {shlex.quote(str(started))} &&" in text
    assert f"{shlex.quote(str(exe))} {shlex.join(argv)}" in text
    def paste() -> subprocess.CompletedProcess:
        return subprocess.run(
            ["sh", "-c", text], cwd=elsewhere, env=env(PATH=BARE_PATH),
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip

    refused = paste()  # the run it reproduces is still there: never silently replaced
    assert refused.returncode == 2 and "--resume" in refused.stderr, refused.stderr[-3000:]
    (started / "run").rename(started / "first")
    again = paste()
    assert again.returncode == 0, again.stderr[-3000:]
    assert "stopped at step 2" in again.stdout
    assert not (elsewhere / "run").exists()
    assert (started / "run" / "last").is_dir()  # it ran in started/run


# ---------------------------------------------------------------------------- launcher
def setup_launcher(bin_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "setup.sh"), "--launcher-only"],
        env=env(DIFFLAB_BIN_DIR=str(bin_dir)), capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_setup_launcher_runs_difflab_from_anywhere_and_leaves_other_files_alone(tmp_path):
    if not (ROOT / ".venv" / "bin" / "difflab").is_file():
        pytest.skip("the launcher runs the checkout's .venv, and there is none")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    first = setup_launcher(bin_dir)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"installed the launcher {bin_dir / 'difflab'}" in first.stdout
    launcher = bin_dir / "difflab"
    assert "# difflab-launcher: written by scripts/setup.sh" in launcher.read_text()
    info = subprocess.run(
        [str(launcher), "info", "fashion-mnist"],
        cwd=tmp_path, env=env(PATH=BARE_PATH), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert info.returncode == 0, info.stderr
    assert info.stdout.startswith("checkpoint ")
    assert "already installed" in setup_launcher(bin_dir).stdout

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "difflab").write_text("#!/bin/sh\necho not difflab's\n")
    other = setup_launcher(theirs)
    assert other.returncode == 0, other.stdout + other.stderr
    assert "left alone" in other.stdout and "export PATH=" in other.stdout
    assert (theirs / "difflab").read_text() == "#!/bin/sh\necho not difflab's\n"

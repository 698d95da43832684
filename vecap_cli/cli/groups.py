"""A command group with a default command, shared by curate and eval.

`vecap curate INPUT...` runs `vecap curate run INPUT...` and `vecap eval INPUT...`
runs `vecap eval run INPUT...`, so the common case reads like every other command,
while the other passes (`curate count`, `eval compare`) stay commands of their own.
"""

import copy
from typing import ClassVar

from typer.core import TyperGroup


class DefaultCommandGroup(TyperGroup):
    """Sends ARGS to `default` unless they start with a command name (or --help).

    `aliases` maps a flag to the command it stands for, wherever it stands:
    `vecap eval A.json --compare B.json` is `vecap eval compare A.json B.json`.
    --help shows the group's help, then the default command's, with its flags.
    """

    default = "run"  # a command that reads INPUT...
    aliases: ClassVar[dict[str, str]] = {}

    def parse_args(self, ctx, args):
        alias = next((arg for arg in args if arg in self.aliases), None)
        if alias is not None:
            args = [self.aliases[alias], *(arg for arg in args if arg != alias)]
        elif args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [self.default, *args]
        return super().parse_args(ctx, args)

    def collect_usage_pieces(self, ctx):
        return [f"[{self.default}] [INPUT]... [OPTIONS] | COMMAND [ARGS]..."]

    def format_help(self, ctx, formatter):
        # typer renders a group's own params only: a copy that has the default
        # command's too shows them in their panels, above the commands
        default = self.commands[self.default]
        view = copy.copy(self)
        view.help = f"{self.help}\n\n{default.help}"
        view.params = [*self.params, *default.params]
        super(DefaultCommandGroup, view).format_help(ctx, formatter)

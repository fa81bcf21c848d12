"""A click option followed by several values, as in `--magnitudes 0 5 9 15`."""
from __future__ import annotations

import click


class ManyValues(click.Option):
    """Takes every following token up to the next flag; values are converted to `element_type`."""

    def __init__(self, *args, element_type=int, **kwargs) -> None:
        kwargs["type"] = click.UNPROCESSED
        super().__init__(*args, **kwargs)
        self.element_type = element_type

    def add_to_parser(self, parser, ctx) -> None:
        super().add_to_parser(parser, ctx)
        for opt in self.opts:
            handler = parser._long_opt.get(opt) or parser._short_opt.get(opt)
            if handler is None:
                continue
            original = handler.process

            def process(value, state, original=original):
                values = [value]
                while state.rargs and not state.rargs[0].startswith("--"):
                    values.append(state.rargs.pop(0))
                original(tuple(values), state)

            handler.process = process

    def type_cast_value(self, ctx, value):
        if value is None:
            return None
        values = (value,) if isinstance(value, str) else tuple(value)
        try:
            return tuple(self.element_type(v) for v in values)
        except ValueError:
            raise click.BadParameter(f"expected {self.element_type.__name__} values, got {' '.join(values)}",
                                     ctx=ctx, param=self) from None

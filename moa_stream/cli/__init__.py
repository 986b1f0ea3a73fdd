"""The terminal commands (chat, run, serve, watch, bench), their options and rich views.

Each command module exposes `add_arguments(parser)` and `main(args) -> int`; `cli.py` wires them. This is the only
package of moa_stream that imports rich or argparse: the core stays usable as a library.
"""

from .options import positive_int

__all__ = ["positive_int"]  # the option types `moa-stream eval` and `bench` (in eval/) plug into

"""Reading an HTCondor submit description back, as HTCondor would: for the tests that check
what dask-jobqueue builds, and for condor_standin.py, which runs jobs from it."""

from __future__ import annotations


def _condor_arguments(text: str) -> list[str]:
    """Split an HTCondor "new syntax" Arguments value (already without its outer quotes)."""
    text = text.replace('""', '"')
    args: list[str] = []
    current: list[str] = []
    in_arg = quoted = False
    i = 0
    while i < len(text):
        c = text[i]
        if c == "'":
            if quoted and text[i + 1 : i + 2] == "'":
                current.append("'")
                i += 2
                continue
            quoted = not quoted
            in_arg = True
        elif c.isspace() and not quoted:
            if in_arg:
                args.append("".join(current))
                current, in_arg = [], False
        else:
            current.append(c)
            in_arg = True
        i += 1
    if in_arg:
        args.append("".join(current))
    return args


def submit_directives(script: str) -> dict[str, str]:
    """The ``key = value`` commands of a submit description, by key."""
    out: dict[str, str] = {}
    for line in script.splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def submit_environment(script: str) -> dict[str, str]:
    """The variables the ``environment`` command of a submit description sets on the worker."""
    value = submit_directives(script).get("environment", "")
    if not value:
        return {}
    if not (value.startswith('"') and value.endswith('"')):
        raise ValueError("the submit description's environment is not in the quoted syntax")
    pairs = (item.partition("=") for item in _condor_arguments(value[1:-1]))
    return {key: val for key, _, val in pairs}


def worker_command(script: str) -> str:
    """The shell command an HTCondor job of ``script`` runs (``Executable -c COMMAND``)."""
    arguments = submit_directives(script).get("Arguments", "")
    if len(arguments) < 2 or not (arguments.startswith('"') and arguments.endswith('"')):
        raise ValueError("the submit description has no quoted Arguments line")
    args = _condor_arguments(arguments[1:-1])
    if len(args) != 2 or args[0] != "-c":
        raise ValueError(f"unexpected Arguments {args!r}: expected -c COMMAND")
    return args[1]

"""ProRL on Megatron-Core: see README.md and docs/architecture.md."""

from importlib import metadata as _metadata

STACK = ("torch", "megatron-core", "transformers")  # what a bug report needs besides this package


def version_line() -> str:
    """This package's version and its stack's, as ``--version`` prints them (metadata only: no
    import of the packages themselves)."""
    def of(name: str) -> str:
        try:
            return _metadata.version(name)
        except _metadata.PackageNotFoundError:
            return "not installed"

    return f"{of('megatron-prorl')} ({', '.join(f'{name} {of(name)}' for name in STACK)})"

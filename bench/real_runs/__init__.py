"""Real-run benchmark: the analyzer's verdicts against blind labels of published training histories."""


def main(argv: list[str] | None = None) -> int:
    from .evaluate import main as evaluate

    return evaluate(argv)

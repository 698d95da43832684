"""The live count: off unless stderr is a terminal; updated as records come in."""

from vecap_cli.stream.progress import progress, showing
from vecap_cli.stream.tally import Tally


def test_off_when_stderr_is_not_a_terminal():
    with progress("t", enabled=True) as update:  # pytest captures stderr
        assert update is None


def test_showing_passes_samples_through_and_updates_every_1024():
    tally = Tally("t")
    seen = []

    def read(n):
        for i in range(n):
            tally.n_in += 1
            yield i

    out = list(showing(read(2100), tally, lambda n_in, n_out: seen.append(n_in)))
    assert out == list(range(2100))
    assert seen == [1, 1025, 2049]

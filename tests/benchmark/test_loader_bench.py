"""`fasthpt bench loaders`' method: iterated as Composer iterates, epoch starts reported apart."""

from fasthpt.benchmark import loaders


class _Loader:
    """Records what the benchmark does to it: set_epoch calls, and generators run past their end."""

    def __init__(self, batches):
        self.batches, self.epochs, self.exhausted = batches, [], 0

    def set_epoch(self, epoch):
        self.epochs.append(epoch)

    def __len__(self):
        return self.batches

    def __iter__(self):
        epoch = self.epochs[-1]
        for b in range(self.batches):
            yield epoch, b
        self.exhausted += 1  # only reached when a generator is resumed after its last batch


def test_batches_are_taken_as_composer_takes_them():
    loader = _Loader(3)
    it = loaders._composer_batches(loader)
    got = [next(it) for _ in range(8)]
    assert got == [(True, (0, 0)), (False, (0, 1)), (False, (0, 2)), (True, (1, 0)), (False, (1, 1)),
                   (False, (1, 2)), (True, (2, 0)), (False, (2, 1))]
    assert loader.epochs == [0, 1, 2]
    assert loader.exhausted == 0  # islice(loader, len(loader)): never resumed past the last batch


def test_epoch_start_waits_are_both_medians_and_their_difference():
    waits = [0.5, 0.1, 0.2, 0.1, 0.3, 0.1, 0.4]
    firsts = [True, False, False, False, True, False, True]
    assert loaders.epoch_start_waits(waits, firsts) == {"epoch_start_s": 0.3, "first_wait_s": 0.4, "wait_s": 0.1}
    # a loader with the next epoch's first batch ready early: a negative difference, both waits shown
    early = loaders.epoch_start_waits([0.01, 0.2, 0.2], [True, False, False])
    assert early["epoch_start_s"] == -0.19 and early["first_wait_s"] == 0.01
    assert loaders.epoch_start_waits([0.1, 0.2], [False, False])["epoch_start_s"] is None
    assert loaders.epoch_start_waits([0.1], [True])["first_wait_s"] is None


def test_the_table_shows_both_waits_not_a_signed_cost():
    row = {"backend": "dali", "res": 32, "batch": 36, "workers": 2, "device": "cpu", "samples_per_s": 2000.0,
           "skipped": None, "batches_per_epoch": 6, "epoch_start_s": -0.062, "first_wait_s": 0.003,
           "wait_s": 0.065, "bytes_per_sample": 3081.5}
    table = loaders.format_table([row])
    assert "wait 1st/other" in table.splitlines()[0]
    assert "3/65 ms" in table and "-62" not in table

"""What happens around a training step whatever runs the epochs (one process or many):
the progress bar and the stop after a non-finite step."""

from __future__ import annotations

from ._checks import NonFiniteLossError


class _Stop(Exception):
    """A step went non-finite and a callback takes over: training ends quietly with the
    logs of that batch."""

    def __init__(self, logs):
        super().__init__()
        self.logs = logs


def _non_finite(model, cbs, epoch, batch, loss, reason):
    """Stops training after a non-finite step: quietly when a callback handles it
    (TerminateOnNaN), else with NonFiniteLossError."""

    if cbs.handles_nan:
        model.stop_training = True
        # a finite loss whose update broke the weights still reports non-finite
        logs = {"loss": loss if reason == "loss" else float("nan")}
        cbs.call("on_train_batch_end", batch, logs)
        raise _Stop(logs)
    what = (
        f"loss became {loss}"
        if reason == "loss"
        else f"the update made the weights non-finite (loss {loss})"
    )
    raise NonFiniteLossError(
        f"{what} at epoch {epoch + 1}, batch {batch + 1}: training stopped with the weights of "
        "the last good step; lower the learning rate or check the data scale (or pass "
        "callbacks=[TerminateOnNaN()] to stop without an error)",
        epoch=epoch,
        batch=batch,
        loss=loss,
    )


def _progress(verbose, n_batches, epoch, epochs):
    if verbose != 1 or n_batches is None:
        return None
    from tqdm.auto import tqdm

    return tqdm(
        total=n_batches,
        desc=f"Epoch {epoch + 1}/{epochs}",
        unit="batch",
        leave=True,
        dynamic_ncols=True,
    )

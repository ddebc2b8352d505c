"""The exceptions kft raises for problems a user can fix."""


class KftError(Exception):
    """A problem the user caused and can fix: bad recipe, bad data, bad option.

    The message says what was wrong and what to do. The CLI prints it in one
    or two lines, without a traceback, and exits with status 2.
    """


class TrainingDiverged(KftError):
    """The training loss became NaN or infinite; training stopped at that batch.

    Attributes:
        stage: the stage's name.
        epoch: the epoch, counted over the whole run from 1.
        batch: the batch within the epoch, from 1.
        loss: the loss value Keras reported.
    """

    def __init__(self, stage, epoch, batch, loss):
        super().__init__(
            f"Training stopped: the loss became {loss} in stage {stage!r}, epoch {epoch}, "
            f"batch {batch}. Lower the learning rate or look for bad values in the data."
        )
        self.stage, self.epoch, self.batch, self.loss = stage, epoch, batch, loss

"""A seconds-long recipe for end-to-end tests: a tiny conv net on an image folder.

Failures at a known point, when epoch N (global, 0-based) begins:
- KFT_TEST_KILL_AT_EPOCH=N: the process SIGKILLs itself (a hard kill);
- KFT_TEST_TERM_AT_EPOCH=N: it sends itself SIGTERM (a scheduler, `docker stop`);
- KFT_TEST_FILE_LIMIT_AT_EPOCH=N:BYTES: files can no longer grow past BYTES, as
  on a full disk (writes fail with EFBIG instead of the default SIGXFSZ kill).
"""

import os
import resource
import signal

import keras

import kft
from tests.helpers.tiny_models import tiny_image_model


class _FailAt(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == int(os.environ.get("KFT_TEST_KILL_AT_EPOCH", -1)):
            os.kill(os.getpid(), signal.SIGKILL)
        if epoch == int(os.environ.get("KFT_TEST_TERM_AT_EPOCH", -1)):
            os.kill(os.getpid(), signal.SIGTERM)
        at, _, limit = os.environ.get("KFT_TEST_FILE_LIMIT_AT_EPOCH", "-1:").partition(":")
        if epoch == int(at):
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), resource.RLIM_INFINITY))


recipe = kft.Recipe(
    name="tiny",
    params=dict(data="", image_size=16, batch_size=8, head_epochs=2, finetune_epochs=2, lr=0.05,
                finetune_lr=0.01, seed=0),
    data=lambda p: kft.data.images.load(
        p.data, image_size=(p.image_size, p.image_size), batch_size=p.batch_size, seed=p.seed
    ),
    model=lambda p, data: tiny_image_model(len(data.class_names), p.image_size),
    stages=lambda p: [
        kft.Stage("head", epochs=p.head_epochs, train="head", lr=p.lr),
        kft.Stage("finetune", epochs=p.finetune_epochs, train="groups:2", lr=p.finetune_lr),
    ],
    callbacks=lambda p: [_FailAt()],
)

"""Cats vs dogs: ResNet50 with ImageNet weights, head first, then the top blocks.

    kft run recipes/cats_dogs.py                       # TFDS cats_vs_dogs (online)
    kft run recipes/cats_dogs.py --data ~/pets         # a folder: pets/cat/*.jpg, pets/dog/*.jpg
    kft run recipes/cats_dogs.py --data ~/pets --set weights=none --set image_size=64 \
        --set head_epochs=1 --set finetune_epochs=1
"""

import kft

recipe = kft.Recipe(
    name="cats_dogs",
    params=dict(
        data="tfds:cats_vs_dogs",
        backbone="resnet50",
        weights="imagenet",
        image_size=224,
        batch_size=32,
        validation_split=0.2,
        augment=True,
        dropout=0.2,
        # The head trains until val_loss stops improving for head_patience
        # epochs (at most head_epochs); 0 turns early stopping off.
        head_epochs=30,
        head_patience=3,
        lr=1e-3,
        finetune_epochs=3,
        # Backbone layer groups (ResNet stages) unfrozen in the second stage.
        unfreeze=1,
        finetune_lr=1e-5,
        # Each group below the top trains at this factor of the rate above it.
        layer_decay=0.5,
        schedule="cosine",
        warmup=0.1,
        # Train the head on backbone features computed once, from the
        # un-augmented images (augmentation applies when the backbone trains).
        cache_features=True,
        seed=0,
    ),
    data=lambda p: kft.data.images.load(
        p.data,
        image_size=(p.image_size, p.image_size),
        batch_size=p.batch_size,
        validation_split=p.validation_split,
        seed=p.seed,
    ),
    model=lambda p, data: kft.vision.image_classifier(
        p.backbone,
        num_classes=len(data.class_names),
        weights=p.weights,
        image_size=p.image_size,
        dropout=p.dropout,
        augment=kft.vision.augmentation() if p.augment else None,
    ),
    stages=lambda p: [
        kft.Stage("head", epochs=p.head_epochs, train="head", lr=p.lr,
                  early_stopping=p.head_patience or None,
                  cache_features=bool(p.cache_features)),
        kft.Stage(
            "finetune",
            epochs=p.finetune_epochs,
            # The head is the last group, so the top `unfreeze` backbone groups
            # plus the head are the last `unfreeze + 1` groups.
            train=f"groups:{p.unfreeze + 1}",
            lr=p.finetune_lr,
            layer_decay=p.layer_decay,
            schedule=p.schedule,
            warmup=p.warmup,
        ),
    ],
)

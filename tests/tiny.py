"""Overrides that make every stage tiny: synthetic data at 12 px and a 4-channel one-block ResNet."""

TINY = [
    "data.pretext=synthetic",
    "data.downstream=synthetic",
    "model.width=4",
    "model.blocks=[1]",
    "data.image_size=12",
    "pretext.projector_hidden=[8]",
    "pretext.projector_dim=8",
]

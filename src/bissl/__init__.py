"""bissl: BiSSL, bilevel optimisation between self-supervised pretraining and fine-tuning."""

__version__ = "0.1.0"

"""s3t: exact machine unlearning for fine-tuned transformers (S3T, ICLR 2025)."""

__version__ = "0.1.0"

"""s3deploy: a pull-based deployment agent that watches S3 and runs the CodeDeploy lifecycle."""

__version__ = "0.1.0"

"""reconciler: GitOps for AWS API Gateway stages and Lambda aliases."""

__version__ = "0.1.0"

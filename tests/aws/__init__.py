"""Tests of the aws backend against a real moto_server (and botocore Stubber where moto falls short)."""

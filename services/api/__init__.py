"""The api role: authenticates, validates, sends commands and reads read models."""

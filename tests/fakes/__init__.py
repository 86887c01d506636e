"""Fakes of the services ALICE talks to: real servers speaking the real protocols."""

"""Load generation and load-test tooling for giftstream."""

"""The tar pit's brain: pure functions from facts and a proposed reply to a Decision. No I/O, no await."""

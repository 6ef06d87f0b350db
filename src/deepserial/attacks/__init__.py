"""Attacks on protected models, one module per attack (each cites its paper)."""

"""Timing the converted files on other machines (a Raspberry Pi, any 64-bit ARM board) over SSH: the device stage."""

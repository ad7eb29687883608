"""I/O drivers: the only part of cortex_fsm that touches sockets and clocks."""

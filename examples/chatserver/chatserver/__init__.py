"""The ws4redis example project: a broadcast chat and a per-user/per-group chat."""

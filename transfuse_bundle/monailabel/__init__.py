"""The MONAI Label integration: the ``monaibundle`` app with TransFuse's active learning, and the installer
that puts a task's bundle folder into it."""

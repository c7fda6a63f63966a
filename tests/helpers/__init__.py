"""Test helpers shared by several test files, imported as ``from helpers.<module> import ...``
(tests/conftest.py puts tests/ on sys.path): paths (REPO, CONF, SHARED), config (SHRINK, compose_cfg),
processes (run_cli, TORCHRUN, sigkill_after_checkpoint), models (the one tiny-model builder), runs,
chat_server, callbacks, fsdp1_shim, dispatch. No tests here."""

"""gitmld.daemon.describe"""

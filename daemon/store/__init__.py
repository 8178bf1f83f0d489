"""gitmld.daemon.store"""

"""gitmld.daemon.remote"""

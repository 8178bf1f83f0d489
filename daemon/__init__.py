"""gitmld.daemon"""

"""gitmld.proto"""

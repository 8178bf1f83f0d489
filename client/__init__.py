"""gitmld.client"""

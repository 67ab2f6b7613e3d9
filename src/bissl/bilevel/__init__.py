"""bilevel"""

"""Flower settings module for botsq: ``celery -A tasks flower --conf=<this file>``.

``botsq flower`` starts Flower with it. The settings are read from the environment named by
BOTSQ_CONFIG (its ``[flower]`` section, see ops/flower.py) and the BOTSQ_FLOWER_* variables;
an unsafe setting (listening off this host without basic_auth) stops Flower with one line.
"""
from ops.flower import settings_from_environment as _settings

globals().update(_settings())

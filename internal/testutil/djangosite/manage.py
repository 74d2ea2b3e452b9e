#!/usr/bin/python3
"""Django's command-line utility for the edgeproxy test site.

Run it with /usr/bin/python3 (Debian's python3-django loads only there).
"""
import os
import sys


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djangosite.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()

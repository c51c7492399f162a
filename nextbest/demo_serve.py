"""``nextbest demo --serve``: after the demo, the service stays up on 127.0.0.1 (as ``nextbest
serve`` runs it: journeys and the learner beside it) and the console's address and keys are
printed, so a newcomer can open the pages on the world the demo built."""

from __future__ import annotations

from rich.console import Console

from nextbest.settings import Settings


def console_lines(settings: Settings, port: int) -> list[str]:
    """What to print: the console's address, and each console key with the role it signs in as."""
    lines = [f"console: http://{settings.host}:{port}/console (sign in with a key below)"]
    for entry in settings.console_keys:
        user, role, key = entry.split(":", 2)
        lines.append(f"  {role:<9} {key}")
    lines += [f"  {'admin':<9} {k}" for k in settings.admin_keys[:1]]
    lines.append("Ctrl-C stops the service.")
    return lines


def serve_console(settings: Settings) -> int:
    """Serve the demo's home in the foreground until interrupted; the exit code."""
    from serving.learner_supervisor import serve_foreground
    from serving.run import server_cmd, server_env

    out = Console()
    for line in console_lines(settings, settings.port):
        out.print(line, highlight=False, markup=False)
    cmd = server_cmd("serving.service:Nextbest", settings.port, settings.host)
    return serve_foreground(settings, cmd, server_env(settings), learner=True)

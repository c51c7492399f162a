"""The console: server-rendered pages for the call-centre agent, the store clerk and the
marketer, served by the decision service itself (``serving.console.pages``)."""

from batchctl.cli import app

app(prog_name="batchctl")

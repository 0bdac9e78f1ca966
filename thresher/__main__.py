from thresher.cli import app

app()

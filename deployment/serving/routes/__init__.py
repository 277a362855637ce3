"""The server's routes, one router per concern; deployment/serving/app.py includes exactly these."""

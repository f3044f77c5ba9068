"""The web app (`xinyi web`): pages for the people who are not engineers — enterprises, auditors
and node operators — served from the holder's own machine, so the private key never leaves it.

It talks to the network only through the client library (xinyi.client, xinyi.auditing), as the
CLI does; nothing below it imports it."""

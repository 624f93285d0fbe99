"""DASH server: media, player page, dash.js, request logs; and video preparation (ffmpeg)."""

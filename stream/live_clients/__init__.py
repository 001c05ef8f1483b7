"""Gift sessions from real TikTok LIVE clients (TikTokLive, TikTok-Live-Connector) in giftstream's gift contract."""

"""The S3 object store the delivery service's results are downloaded from (``rclone serve s3``)."""
